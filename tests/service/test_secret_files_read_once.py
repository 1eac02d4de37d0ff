"""Every GARMIN_AUTH_<SECRET>_FILE is read once per command, and only by commands that need
secrets.

A pipe (a shell's <(vault read ...), a secrets agent's FIFO) gives its content to the first
reader only. Before, every `load_*` call read every secret file again: `serve` read them four
times (settings, keys, TLS, audit retention), `migrate`, `rotate-keys` and `prune-audit` twice,
so any secret given as a pipe was "empty" the second time and the command stopped on a
configuration error (exit 2). `health-check`, the liveness probe run every few seconds, read
the database URL and the keys it never uses, and a secret file it could not read failed it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth_service.config import load_settings
from tests.service.test_cli import CLI, base_env, run_cli

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pipes() -> Iterator[list[int]]:
    """Read ends to close after the test."""
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


def _pipe_holding(content: str, opened: list[int]) -> str:
    """A path that reads as `content` once, then as nothing (its writer has closed)."""
    read_end, write_end = os.pipe()
    os.write(write_end, content.encode())
    os.close(write_end)
    opened.append(read_end)
    return f"/dev/fd/{read_end}"


def test_settings_read_each_secret_pipe_once(tmp_path: Path, pipes: list[int]) -> None:
    env = base_env(tmp_path)
    url, keys = env.pop("GARMIN_AUTH_DATABASE_URL"), env.pop("GARMIN_AUTH_ENCRYPTION_KEYS")
    env["GARMIN_AUTH_DATABASE_URL_FILE"] = _pipe_holding(url, pipes)
    env["GARMIN_AUTH_ENCRYPTION_KEYS_FILE"] = _pipe_holding(keys + "\n", pipes)
    settings = load_settings(env)  # before: ConfigError "... is empty"
    assert settings.database_url == url
    assert settings.keyring.primary_kid == "k1"


def _in_shell(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`command` with its secrets as bash process substitutions, as an operator types it."""
    return subprocess.run(
        ["bash", "-c", command],
        env={**env, "CLI": CLI},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


PIPED = (
    'GARMIN_AUTH_DATABASE_URL_FILE=<(printf %s "$URL") '
    'GARMIN_AUTH_ENCRYPTION_KEYS_FILE=<(printf %s "$KEYS") "$CLI" '
)


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("migrate", "is at revision"),
        ("rotate-keys", "re-encrypted under key 'k1'"),
        ("prune-audit", "deleted 0 audit events"),
    ],
)
def test_commands_take_their_secrets_from_pipes(tmp_path: Path, command: str, said: str) -> None:
    env = base_env(tmp_path)
    assert run_cli("migrate", env=env).returncode == 0
    env["URL"], env["KEYS"] = (
        env.pop("GARMIN_AUTH_DATABASE_URL"),
        env.pop("GARMIN_AUTH_ENCRYPTION_KEYS"),
    )
    result = _in_shell(PIPED + command, env)
    assert result.returncode == 0, result.stderr[-600:]  # before: exit 2, "... is empty"
    assert said in result.stdout


def test_a_database_error_names_the_url_read_from_a_pipe(tmp_path: Path) -> None:
    """The error handler used to read the URL again: from a pipe, a configuration error."""
    env = base_env(tmp_path)
    env.pop("GARMIN_AUTH_DATABASE_URL")
    env["KEYS"] = env.pop("GARMIN_AUTH_ENCRYPTION_KEYS")
    # Nothing listens on port 9 (discard) here: the connection is refused at once.
    env["URL"] = "postgresql+psycopg://garmin:db-password-123@127.0.0.1:9/garmin"
    result = _in_shell(PIPED + "migrate", {**env, "GARMIN_AUTH_MIGRATION_ATTEMPTS": "1"})
    assert result.returncode == 3, result.stderr[-600:]
    assert "database error on postgresql+psycopg://garmin:***@127.0.0.1:9/garmin" in (result.stderr)
    assert "db-password-123" not in result.stderr


def test_health_check_reads_no_secret(tmp_path: Path) -> None:
    """The probe asks a port; a secret file it cannot read is none of its business."""
    env = base_env(tmp_path, GARMIN_AUTH_HEALTH_LISTEN="off")
    env.pop("GARMIN_AUTH_DATABASE_URL")
    env["GARMIN_AUTH_DATABASE_URL_FILE"] = str(tmp_path / "not-mounted-yet")
    probe = run_cli("health-check", env=env)
    # Nothing serves: it asked the port (before: "cannot ask (..._FILE: cannot read ...)").
    assert probe.returncode == 1
    assert probe.stdout.startswith("liveness: no answer from 127.0.0.1:"), probe.stdout
