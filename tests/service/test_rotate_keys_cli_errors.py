"""`garmin-auth-service rotate-keys`: a bad flag is exit 2 and a database that does not answer
is one line and exit 3, never a traceback and never exit 1, which the README keeps for
"anything still needs an old key"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from auth_service.crypto import Keyring
from auth_service.storage.schema import upgrade_to_head

CLI = str(Path(sys.executable).parent / "garmin-auth-service")


def _run(tmp_path: Path, *args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}
    env.update(
        GARMIN_AUTH_DATABASE_URL=database_url,
        GARMIN_AUTH_ENCRYPTION_KEYS=Keyring.generate_key_value("k1"),
    )
    return subprocess.run(
        [CLI, "rotate-keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("batch_size", ["0", "-5"])
def test_a_bad_batch_size_is_a_configuration_error(tmp_path: Path, batch_size: str) -> None:
    done = _run(
        tmp_path, "--batch-size", batch_size, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}"
    )

    assert (done.returncode, "Traceback" in done.stderr) == (2, False), (
        f"exit {done.returncode}; stderr ends: {done.stderr.strip().splitlines()[-1]}"
    )


def test_a_batch_size_beyond_the_bound_is_a_configuration_error(tmp_path: Path) -> None:
    """Before, only a batch size below 1 was refused: 2**63 reached the database as a LIMIT
    and died on an OverflowError traceback, exit 1, the code that says an old key is still
    needed. Now the flag is bounded (1-100000): exit 2, one line naming it."""
    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    upgrade_to_head(database_url)  # else the missing database file is refused first

    done = _run(tmp_path, "--batch-size", str(2**63), database_url=database_url)

    assert (done.returncode, "Traceback" in done.stderr) == (2, False), done.stderr[-600:]
    assert "--batch-size: must be 1-100000" in done.stderr


def test_an_unreachable_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    done = _run(
        tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    )

    assert (done.returncode, "Traceback" in done.stderr) == (3, False), (
        f"exit {done.returncode} (README: 1 = still needs an old key); "
        f"{len(done.stderr.splitlines())} lines on stderr, ending: "
        f"{done.stderr.strip().splitlines()[-1]}"
    )


def test_a_mistyped_sqlite_path_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.sqlite3"

    done = _run(tmp_path, database_url=f"sqlite:///{missing}")

    assert (done.returncode, missing.exists()) == (2, False), done.stderr
    assert "does not exist" in done.stderr
