"""GARMIN_AUTH_DATABASE_URL: its password never reaches output, and a malformed URL stops
start-up with one line naming the variable (README "Configuration", "check-config")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auth_service.checks import run_checks
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
