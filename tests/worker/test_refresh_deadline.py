"""Garmin's token endpoint hangs while several of the run's users need a fresh token: the
service's refreshes queue for its refresh slots, and a RefreshLease waits longer than the
worker's --rpc-timeout. The worker read that DEADLINE_EXCEEDED as "the auth service is
unreachable": exit 3, the whole run stopped. A call the service may spend waiting for Garmin
(LeaseSession, LeaseNextSession, RefreshLease) that times out is now counted with the run's
Garmin outages (--max-garmin-unavailable, exit 4). Found by review.

Scaled: the service's Garmin timeout is 2 s (production default 10 s) and the worker's
--rpc-timeout 3 x that, 6 s (production default 30 s = 3 x 10 s)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from auth_service.domain.policies import RefreshSettings
from garmin_emulator import GarminEmulator
from garmin_emulator.endpoints import EXCHANGE_PATH
from sync_worker.directory_sink import DirectorySink
from tests.fixtures.servers import ServiceFactory
from tests.worker import RecordingSink, connect, email_of, make_config, run_worker

pytestmark = pytest.mark.timeout(90)


def test_refreshes_queued_behind_a_hanging_garmin_are_not_the_service_being_down(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    service = service_factory.start(
        refresh=RefreshSettings(concurrency=1, validate_interval_seconds=0.0)
    )
    users = ("q1", "q2", "q3", "q4")
    for user in users:
        connect(service, garmin, user, activities=2)
    config = make_config(service.target, garmin, tmp_path, users=users, concurrency=4)
    config = dataclasses.replace(config, auth=dataclasses.replace(config.auth, timeout_seconds=6.0))
    # Every user's token is refused by Garmin from now on, and Garmin's exchange hangs.
    for user in users:
        garmin.expire_access_tokens(email_of(user))
    garmin.fail_next(EXCHANGE_PATH, "hang", count=100, delay=5)

    result = run_worker(config, sink=RecordingSink(DirectorySink(tmp_path)))

    assert result.report.fatal is None, (
        f"run ended as the service unreachable: {result.report.fatal}"
    )
    assert result.exit_code == 4
    assert result.report.garmin_outage
