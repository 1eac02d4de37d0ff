"""The Dockerfile builds from pinned bytes only: a base image by digest, every package
hash-checked from a lock; and Docker can tell whether the service lives (HEALTHCHECK)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
# Instructions with their continuation lines joined.
INSTRUCTIONS = re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines()


def test_every_base_image_is_pinned_by_digest_or_is_an_earlier_stage() -> None:
    stages: set[str] = set()
    froms = [line.split() for line in INSTRUCTIONS if line.startswith("FROM ")]
    assert froms
    for words in froms:
        image = words[1]
        assert image in stages or re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), (
            image
        )
        if len(words) == 4 and words[2].upper() == "AS":
            stages.add(words[3])


def test_every_pip_install_is_hash_checked_or_installs_our_own_wheel() -> None:
    installs = [line for line in INSTRUCTIONS if "pip " in line]
    commands = [c for line in installs for c in line.split("&&") if " install " in c]
    assert commands
    for command in commands:
        locked = "--require-hashes" in command and "-r requirements/" in command
        own_wheel = "--no-deps" in command and "/wheels/garmin_auth-" in command
        assert locked or own_wheel, command
    # Only the locks the image needs are in its build context.
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert "!requirements/runtime.lock" in ignore
    assert "!requirements/build.lock" in ignore


def test_the_healthcheck_asks_the_services_liveness() -> None:
    [healthcheck] = [line for line in INSTRUCTIONS if line.startswith("HEALTHCHECK ")]
    assert 'CMD ["garmin-auth-service", "health-check", "--service", "liveness"]' in healthcheck
