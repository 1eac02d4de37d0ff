"""A worker caller scoped with `user_id_prefix`, run with `--user` naming one user outside its
scope: that user is FAILED (exit 1, like an unknown user) and the run goes on. Before, every
CALLER_FORBIDDEN counted as "the auth service refuses the worker's credentials": the run
stopped (exit 3) and the users in scope were never synced. The service now marks a refusal
about the user named (ErrorInfo metadata scope=user)."""

from __future__ import annotations

from pathlib import Path

import pytest

from auth_service.api.callers import token_sha256
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ROLE_TOKENS, ServiceFactory
from tests.worker import connect as connect_user
from tests.worker import make_config, run_worker

pytestmark = pytest.mark.timeout(60)

SCOPED_TOKEN = "scoped-worker-token-0123456789abcdef"
ADMIN_SHA = token_sha256(ROLE_TOKENS["admin"])


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_one_user_outside_the_scope_does_not_stop_the_run(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    callers = tmp_path / "scoped-callers.toml"
    callers.write_text(
        f'[[callers]]\nname = "admin-caller"\ntoken_sha256 = "{ADMIN_SHA}"\nroles = ["admin"]\n\n'
        f'[[callers]]\nname = "tenant-a-worker"\ntoken_sha256 = "{token_sha256(SCOPED_TOKEN)}"\n'
        'roles = ["worker"]\nuser_id_prefix = "tenant-a:"\n',
        encoding="utf-8",
    )
    service = service_factory.start(callers_file=callers)
    connect_user(service, garmin, "tenant-a:amy", activities=2)
    connect_user(service, garmin, "zed", activities=2)
    out = tmp_path / "out"
    config = make_config(
        service.target,
        garmin,
        out,
        users=("zed", "tenant-a:amy"),
        concurrency=1,
        token=SCOPED_TOKEN,
    )

    result = run_worker(config)

    # The credentials are fine: the user in scope is synced ...
    assert "tenant-a:amy" in result.users, (
        f"exit {result.exit_code}, fatal={result.report.fatal}, lines={result.lines}"
    )
    assert result.outcome("tenant-a:amy") == "SYNCED"
    # ... and the one outside the scope is FAILED, not "credentials refused".
    assert result.outcome("zed") == "FAILED"
    [zed] = [r for r in result.report.results if r.user_id == "zed"]
    assert "CALLER_FORBIDDEN" in zed.detail
    assert result.report.fatal is None
    assert result.exit_code == 1
