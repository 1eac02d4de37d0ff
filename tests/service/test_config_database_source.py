"""Where the database is must be said, never guessed.

- A `*_FILE` secret that names an empty file (a Kubernetes Secret whose key was left empty)
  was read as "unset": an empty GARMIN_AUTH_DATABASE_URL_FILE fell back to the default
  `sqlite:///garmin-auth.sqlite3`, and `migrate` then `serve` ran users' sessions in a file
  inside the container, exit 0. An empty key file gave "is required but not set".
- An in-memory SQLite URL (`sqlite://`, `sqlite:///`, `sqlite:///:memory:`) holds nothing
  between connections: `migrate` reported it migrated (exit 0, "at revision None") and
  `serve` then refused it as not migrated, a loop for the operator.

README, Configuration: GARMIN_AUTH_DATABASE_URL(_FILE); "Both set is a configuration error".
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from auth_service.cli import main
from auth_service.config import load_database_url, load_settings
from garmin_client.env import ConfigError


def _env(tmp_path: Path) -> dict[str, str]:
    callers = tmp_path / "callers.toml"
    callers.write_text("")
    return {
        "GARMIN_AUTH_ENCRYPTION_KEYS": "k1:" + base64.b64encode(b"k" * 32).decode(),
        "GARMIN_AUTH_CALLERS_FILE": str(callers),
        "GARMIN_AUTH_OAUTH_CONSUMER_KEY": "ck",
        "GARMIN_AUTH_OAUTH_CONSUMER_SECRET": "cs",
    }


def test_an_empty_database_url_file_is_refused_not_replaced_by_the_default_sqlite(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "database-url"
    empty.write_text("\n")
    env = {**_env(tmp_path), "GARMIN_AUTH_DATABASE_URL_FILE": str(empty)}
    with pytest.raises(ConfigError, match=r"GARMIN_AUTH_DATABASE_URL_FILE.* is empty"):
        load_database_url(env)  # before: the default sqlite:///garmin-auth.sqlite3
    with pytest.raises(ConfigError, match="GARMIN_AUTH_DATABASE_URL_FILE"):
        load_settings(env)


def test_an_empty_key_file_says_the_file_is_empty(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("")
    env = {k: v for k, v in _env(tmp_path).items() if k != "GARMIN_AUTH_ENCRYPTION_KEYS"}
    env["GARMIN_AUTH_ENCRYPTION_KEYS_FILE"] = str(empty)
    with pytest.raises(ConfigError, match=r"GARMIN_AUTH_ENCRYPTION_KEYS_FILE.* is empty"):
        load_settings(env)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_migrate_refuses_an_in_memory_database(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GARMIN_AUTH_DATABASE_URL", url)
    code = main(["migrate"])
    captured = capsys.readouterr()
    assert code == 2, f"migrate exited {code} on {url!r}: {captured.out.strip()}"
    assert "GARMIN_AUTH_DATABASE_URL" in captured.err
    assert "Traceback" not in captured.err
