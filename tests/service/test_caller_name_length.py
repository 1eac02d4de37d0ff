"""Caller names fit what audit events and lease bindings keep of them.

A lease is bound to the caller that obtained it (README, "The lease protocol"), by the
caller's name cut to CALLER_LENGTH characters (auth_service/domain/audit.py caller_name).
The callers file accepted names of any length, so two callers whose names shared their first
CALLER_LENGTH characters were one caller for every lease: each could renew, refresh and
release the other's. Such a name is now refused where it enters: by the callers file's parser
(the service does not start; a reload refuses every caller) and by `new-caller-token`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auth_service.api.callers import CallersFileError, parse_callers, token_sha256
from auth_service.cli import main
from auth_service.domain.audit import CALLER_LENGTH
from garmin_client.env import ConfigError
from tests.fixtures.servers import ROLE_TOKENS, ServiceFactory

STEM = "tenant-worker-" + "x" * (CALLER_LENGTH - len("tenant-worker-"))
TOKENS = {
    STEM + "-a": "long-name-worker-a-token-0123456789abcdef",
    STEM + "-b": "long-name-worker-b-token-0123456789abcdef",
}


def _entry(name: str, token: str, role: str = "worker") -> str:
    return (
        f'[[callers]]\nname = "{name}"\ntoken_sha256 = "{token_sha256(token)}"\n'
        f'roles = ["{role}"]\n\n'
    )


def _callers(*names: str) -> str:
    """The admin, then a worker per name."""
    text = _entry("admin", ROLE_TOKENS["admin"], "admin")
    return text + "".join(_entry(name, TOKENS.get(name, name + "-token")) for name in names)


def test_a_name_of_caller_length_is_accepted() -> None:
    (_admin, worker) = parse_callers(_callers(STEM), "callers.toml")
    assert worker.caller.name == STEM


def test_a_longer_name_is_refused_by_position_without_echoing_it() -> None:
    with pytest.raises(CallersFileError) as refused:
        parse_callers(_callers(STEM, STEM + "-a"), "callers.toml")
    message = str(refused.value)
    assert message.startswith("callers.toml: callers entry 3: ")
    assert f"at most {CALLER_LENGTH}" in message
    assert STEM not in message


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_two_names_alike_up_to_caller_length_do_not_start_a_service(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """The reviewer's case: before, the service started and worker b could release the
    lease worker a was granted (it answered OK, not LEASE_LOST)."""
    callers = tmp_path / "callers.toml"
    callers.write_text(_callers(*TOKENS), encoding="utf-8")
    # A setting the service cannot start on, named by its variable (server.load_callers).
    with pytest.raises(ConfigError, match=r"GARMIN_AUTH_CALLERS_FILE: .*callers entry 2: name is"):
        service_factory.start(callers_file=callers)


def test_new_caller_token_refuses_a_longer_name(capsys: pytest.CaptureFixture[str]) -> None:
    """Its entry, pasted into the live file, would make the service refuse every caller."""
    assert main(["new-caller-token", "--name", STEM + "-a", "--role", "worker"]) == 2
    printed = capsys.readouterr()
    assert "--name" in printed.err
    assert f"at most {CALLER_LENGTH}" in printed.err
    assert "token" not in printed.out
