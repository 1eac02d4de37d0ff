"""A TLS file path the process cannot even look at is a configuration error: exit 2, one line
naming the variable (README, the worker's exit codes).

Before: garmin_client.env.EnvReader.path called Path.is_file(), which on Python 3.11 answers
False only for a path that does not exist and raises for the others (ENAMETOOLONG; EACCES, a
directory the worker's uid 10001 may not search): `garmin-sync-worker run` died of an OSError
traceback, exit 1. The reader is the service's too (GARMIN_AUTH_TLS_*, the webhook secret's
file), so the service started the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.worker.test_cli import main_in_process, one_line  # noqa: F401 (a fixture)

TOO_LONG = "/tmp/" + "a" * 300  # noqa: S108 - never created: the name alone is refused


@pytest.mark.parametrize("variable", ["GARMIN_SYNC_TLS_CA", "GARMIN_SYNC_TLS_CERT"])
def test_a_tls_path_the_system_cannot_stat_is_a_configuration_error(
    main_in_process: Callable[..., tuple[int, str, str]],  # noqa: F811
    tmp_path: Path,
    variable: str,
) -> None:
    env = {"GARMIN_SYNC_AUTH_TOKEN": "worker-token-0123456789abcdef", variable: TOO_LONG}
    if variable == "GARMIN_SYNC_TLS_CERT":
        env["GARMIN_SYNC_TLS_CA"] = "/etc/hostname"  # never read: the CERT is checked first
    code, _out, err = main_in_process(env, "run", "--all", "--out", str(tmp_path))
    assert code == 2
    line = one_line(err)
    assert variable in line
    assert "File name too long" in line
