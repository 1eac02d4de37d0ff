"""README, exit 2: "also when the auth service refuses the run's own settings" (a --lease-ttl
above GARMIN_AUTH_LEASE_MAX_TTL). The --all run exited 2 (tests/worker/test_failures.py); the
same settings with --user reported every user FAILED and exited 1, with no line naming the
setting. Now both exit 2 and nothing is leased. Real service over gRPC, emulator over HTTP."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from auth_service.domain.policies import LeaseSettings
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.worker import connect, make_config, run_worker, status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_named_users_whose_settings_the_service_refuses_exit_2(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    service = service_factory.start(leases=LeaseSettings(default_ttl=300, max_ttl=600))
    connect(service, garmin, "amy", activities=2)
    connect(service, garmin, "ben", activities=2)
    config = make_config(service.target, garmin, tmp_path, users=("amy", "ben"))
    config = dataclasses.replace(
        config, sync=dataclasses.replace(config.sync, lease_ttl=timedelta(minutes=15))
    )

    result = run_worker(config)

    assert (result.exit_code, result.report.settings_refused is not None) == (2, True), (
        f"exit {result.exit_code}; lines={result.lines}"
    )
    assert "ttl" in str(result.report.settings_refused)
    for user in ("amy", "ben"):
        assert not status(service, user).HasField("last_sync_attempt_at")
        assert not status(service, user).HasField("lease")
