"""GARMIN_SYNC_AUTH_TOKEN_FILE: the worker's bearer token read from a file (a Kubernetes Secret
mounted as a file, deploy/kubernetes), against a real auth service."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica

from . import WORKER_SCRIPT, WORKER_TOKEN, connect, worker_env

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend() -> str:
    """The auth service's database: SQLite only in this module (the worker is under test)."""
    return "sqlite"


def run(env: dict[str, str], out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WORKER_SCRIPT, "run", "--all", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def file_env(target: str, garmin: GarminEmulator, token_file: Path) -> dict[str, str]:
    env = worker_env(target, garmin, GARMIN_SYNC_AUTH_TOKEN_FILE=str(token_file))
    del env["GARMIN_SYNC_AUTH_TOKEN"]
    return env


def test_the_token_is_read_from_the_file_a_secret_mount_holds(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "tia", activities=2)
    token_file = tmp_path / "auth-token"
    # As Kubernetes mounts a Secret written with a trailing newline.
    token_file.write_text(WORKER_TOKEN + "\n", encoding="utf-8")

    result = run(file_env(service.target, garmin, token_file), tmp_path / "out")

    assert result.returncode == 0, result.stderr
    [user, summary] = [json.loads(line) for line in result.stdout.splitlines()]
    assert user["user_id"] == "tia"
    assert summary["users"] == 1
    assert WORKER_TOKEN not in result.stdout + result.stderr


def test_the_service_sees_the_files_token_not_another(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    token_file = tmp_path / "auth-token"
    token_file.write_text("not-the-worker-token-0123456789", encoding="utf-8")

    result = run(file_env(service.target, garmin, token_file), tmp_path / "out")

    assert result.returncode == 3
    assert "refuses the worker's credentials" in result.stderr
    assert "not-the-worker-token" not in result.stderr


@pytest.mark.parametrize(
    ("content", "also_variable", "mentions"),
    [
        (WORKER_TOKEN, True, "set either GARMIN_SYNC_AUTH_TOKEN or this, not both"),
        ("  \n", False, "is empty"),
        (None, False, "cannot read"),
    ],
    ids=["both-set", "empty-file", "missing-file"],
)
def test_a_bad_token_file_exits_2_naming_the_variable(
    garmin: GarminEmulator,
    tmp_path: Path,
    content: str | None,
    also_variable: bool,
    mentions: str,
) -> None:
    token_file = tmp_path / "auth-token"
    if content is not None:
        token_file.write_text(content, encoding="utf-8")
    env = file_env("127.0.0.1:1", garmin, token_file)
    if also_variable:
        env["GARMIN_SYNC_AUTH_TOKEN"] = WORKER_TOKEN

    result = run(env, tmp_path / "out")

    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("garmin-sync-worker: configuration error: GARMIN_SYNC_AUTH_TOKEN_FILE: ")
    assert mentions in line
    assert WORKER_TOKEN not in line
