"""`scripts/demo` (`garmin-auth-service demo`) is the README's first command on a fresh
machine, and `--once` invites running it again. The demo keeps its state in ./demo-data,
SQLite database and login throttle included, and signs `demo-user` in on every run (each
run's emulator is a new Garmin). Before, the sixth run within an hour died with a gRPC
traceback (RESOURCE_EXHAUSTED "too many logins for this user") and exit 1, before the worker
ran: the demo now raises GARMIN_AUTH_LOGIN_LIMIT, and a failed sign-in is one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.emulators import scanned_emulator

CLI = str(Path(sys.executable).parent / "garmin-auth-service")

pytestmark = pytest.mark.timeout(600)


def test_the_demo_runs_again_and_again(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GARMIN_AUTH_", "GARMIN_SYNC"))}
    env["GARMIN_AUTH_LISTEN"] = "127.0.0.1:0"  # not the README's 50051: tests run side by side
    folder = tmp_path / "demo-data"
    for run in range(1, 7):
        result = subprocess.run(
            [CLI, "demo", "--once", "--folder", str(folder)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (run, result.stderr[-700:])
        assert "Traceback" not in result.stderr, (run, result.stderr[-700:])


def _demo_once(tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GARMIN_AUTH_", "GARMIN_SYNC"))}
    env["GARMIN_AUTH_LISTEN"] = "127.0.0.1:0"
    env.update(extra_env)
    result = subprocess.run(
        [CLI, "demo", "--once", "--folder", str(tmp_path / "demo-data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-700:]
    return result


def test_the_demo_says_what_it_does(tmp_path: Path) -> None:
    """With --once it says it stops (it printed 'is serving' and 'Stop with Ctrl-C.' as it
    exited); with GARMIN_AUTH_UPSTREAM_URL set it names no emulator, connects nobody and
    runs no worker (it cannot know a real account), as the README says."""
    ran = _demo_once(tmp_path / "own")
    assert "with --once it stops now" in ran.stdout
    assert "Stop with Ctrl-C." not in ran.stdout
    assert "emulator upstream" in ran.stdout
    garmin = scanned_emulator().start()
    url = garmin.url
    try:
        elsewhere = _demo_once(tmp_path / "elsewhere", GARMIN_AUTH_UPSTREAM_URL=url)
    finally:
        garmin.stop()
    assert "emulator upstream" not in elsewhere.stdout
    assert "upstream: GARMIN_AUTH_UPSTREAM_URL" in elsewhere.stdout
    assert url not in elsewhere.stdout
    assert "garmin-sync-worker run" not in elsewhere.stdout
