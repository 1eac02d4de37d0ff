"""GARMIN_AUTH_DATABASE_URL: its password never reaches output, and a malformed URL stops
start-up with one line naming the variable (README "Configuration", "check-config")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auth_service.checks import run_checks
from auth_service.config import load_database_url, redacted_database_url
from auth_service.crypto import Keyring
from garmin_client.env import ConfigError
from garmin_client.url_secrets import redacted_url
from sync_worker.config import check_sink_url
from tests.service.test_cli import base_env, run_cli

SECRET = "Tr0ub4dorHorse99"


def _process_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}


def _with_password_parameter(url: str) -> str:
    # libpq / psycopg take the password as a URI query parameter too; SQLAlchemy passes it on.
    return f"{url}?password={SECRET}"


@pytest.mark.postgres
def test_migrate_never_prints_a_password_given_as_a_url_parameter(pg_database_url: str) -> None:
    env = {**_process_env(), "GARMIN_AUTH_DATABASE_URL": _with_password_parameter(pg_database_url)}
    result = run_cli("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.postgres
def test_check_config_never_prints_a_password_given_as_a_url_parameter(
    pg_database_url: str,
) -> None:
    results = run_checks({"GARMIN_AUTH_DATABASE_URL": _with_password_parameter(pg_database_url)})
    lines = [result.line() for result in results]
    assert not [line for line in lines if SECRET in line]


def test_check_config_never_prints_part_of_a_password_holding_an_at_sign() -> None:
    # A password with an '@' the operator did not percent-encode: SQLAlchemy splits it at the
    # first '@' and takes the rest for the host, which the "redacted" URL then shows.
    url = "postgresql+psycopg://garmin:Tr0ub4dor@Horse99@127.0.0.1:1/garmin"
    lines = [result.line() for result in run_checks({"GARMIN_AUTH_DATABASE_URL": url})]
    assert not [line for line in lines if "Horse99" in line]


def test_a_malformed_port_stops_start_up_with_one_line_naming_the_variable(
    tmp_path: Path,
) -> None:
    url = "postgresql+psycopg://garmin:pw@db.internal:5432x/garmin"
    result = run_cli("serve", env=base_env(tmp_path, GARMIN_AUTH_DATABASE_URL=url))
    assert "Traceback" not in result.stderr, result.stderr[-400:]
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "GARMIN_AUTH_DATABASE_URL" in lines[0]


# A password holding `#`, `/` or `?`: SQLAlchemy reads (and connects with) all of it, while
# urllib's urlsplit ends the host part at the first of them. Before, the redaction split with
# urlsplit, found no password and printed it whole.
PASSWORDS = ["hunter2#Secret", "hunter2/Secret", "hunter2?Secret"]


def _url(password: str) -> str:
    # Port 1: nothing listens, so the database check fails at once and prints the URL.
    return f"postgresql+psycopg://garmin:{password}@127.0.0.1:1/garmin"


@pytest.mark.parametrize("password", PASSWORDS)
def test_redacted_database_url_hides_the_password(password: str) -> None:
    # load_database_url accepts this URL, and make_url(url).password is the whole password.
    shown = redacted_database_url(_url(password))
    assert "hunter2" not in shown, shown
    assert "Secret" not in shown, shown


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_workers_sink_url_is_shown_without_its_password(password: str) -> None:
    shown = redacted_url(f"postgresql://garmin:{password}@127.0.0.1:1/garmin")
    assert "hunter2" not in shown, shown


@pytest.mark.parametrize("password", PASSWORDS)
def test_check_config_prints_no_password(password: str) -> None:
    env = {
        "GARMIN_AUTH_DATABASE_URL": _url(password),
        "GARMIN_AUTH_ENCRYPTION_KEYS": Keyring.generate_key_value("k1"),
        "GARMIN_AUTH_ALLOW_UNAUTHENTICATED": "true",
        "GARMIN_AUTH_OAUTH_CONSUMER_KEY": "consumer-key",
        "GARMIN_AUTH_OAUTH_CONSUMER_SECRET": "consumer-secret",
        "GARMIN_AUTH_HEALTH_LISTEN": "off",
    }
    lines = [result.line() for result in run_checks(env)]
    leaking = [line for line in lines if "hunter2" in line]
    assert not leaking, leaking


# A password holding an '@' not percent-encoded after a '/', '?' or '#': urllib's netloc ends at
# those, so a check counting its '@'s let the URL through, and SQLAlchemy took the password's
# tail ("Horse99") for the host, which every redacted line then printed.
UNENCODED_AT = ["Tr0ub/4dor@Horse99", "Tr0ub?4dor@Horse99", "Tr0ub#4dor@Horse99"]


@pytest.mark.parametrize("password", UNENCODED_AT)
def test_an_at_sign_after_the_password_is_refused_whatever_precedes_it(password: str) -> None:
    url = f"postgresql+psycopg://garmin:{password}@127.0.0.1:1/garmin"
    with pytest.raises(ConfigError) as raised:
        load_database_url({"GARMIN_AUTH_DATABASE_URL": url})
    assert raised.value.variable == "GARMIN_AUTH_DATABASE_URL"
    assert "Horse99" not in str(raised.value)
    lines = [result.line() for result in run_checks({"GARMIN_AUTH_DATABASE_URL": url})]
    assert not [line for line in lines if "Horse99" in line], lines
    with pytest.raises(ConfigError) as sink:
        check_sink_url(url)
    assert "Horse99" not in str(sink.value)


def test_an_encoded_at_sign_and_a_sqlite_path_with_one_are_accepted(tmp_path: Path) -> None:
    encoded = "postgresql+psycopg://garmin:Tr0ub%2F4dor%40Horse99@127.0.0.1:1/garmin"
    assert load_database_url({"GARMIN_AUTH_DATABASE_URL": encoded}) == encoded
    assert check_sink_url(encoded) == encoded
    folder = tmp_path / "a@b"
    folder.mkdir()
    sqlite = f"sqlite:///{folder}/garmin.sqlite3"
    assert load_database_url({"GARMIN_AUTH_DATABASE_URL": sqlite}) == sqlite


def test_a_user_name_holding_an_at_sign_is_accepted_and_its_password_hidden() -> None:
    """SQLAlchemy reads Azure's `user@server` user name: the password is what follows its
    `:`. The redaction read the user name as ending at the first `@`, found no password,
    and every line naming the URL printed it (the '@' rule then let it through too)."""
    url = f"postgresql+psycopg://garmin@azure-pg:{SECRET}@127.0.0.1:1/garmin"
    assert load_database_url({"GARMIN_AUTH_DATABASE_URL": url}) == url
    assert (
        redacted_database_url(url) == "postgresql+psycopg://garmin@azure-pg:***@127.0.0.1:1/garmin"
    )
    lines = [result.line() for result in run_checks({"GARMIN_AUTH_DATABASE_URL": url})]
    assert not [line for line in lines if SECRET in line], lines
    sink = url.replace("+psycopg", "")
    assert check_sink_url(sink) == sink
    assert SECRET not in redacted_url(sink)
