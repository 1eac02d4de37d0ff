"""One account's cooldown must not stop a worker's run for everyone. The service keeps Garmin's
429s per account (README, "How we treat Garmin's limits": that account is not sent to Garmin
again; the others go on). Before, LeaseNextSession answered GARMIN_RATE_LIMITED for the first
due user whose grant needed a refresh during that user's cooldown, and the worker turns every
GARMIN_RATE_LIMITED into a pause of the whole run: with the cooldown longer than --max-runtime,
the run synced nobody. Now such a session is skipped for the next one, as a sync attempt."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import EXCHANGE_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.reliability import SkewedClock
from tests.worker import connect, make_config, run_worker

pytestmark = pytest.mark.timeout(90)

COOLDOWN = 1800  # Garmin's Retry-After for one account's token exchange


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_one_accounts_cooldown_does_not_stop_the_run_for_everyone(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    # A day later on the service's clock: every stored access token has expired, so every
    # grant refreshes first (as for users not synced for a while).
    # The users sign in through a replica on today's clock; the run's replica reads a day
    # later (its own sign-ins would count their tokens' lifetimes from its clock).
    today = service_factory.start()
    for user in ("amy", "ben", "cat"):
        connect(today, garmin, user, activities=1)
    service = service_factory.start(clock=SkewedClock(timedelta(days=1)))

    # An admin's validation of amy meets Garmin's 429 (keep-alive would do the same): amy's
    # account waits 30 minutes. Nothing about ben or cat.
    garmin.fail_next(EXCHANGE_PATH, 429, retry_after=COOLDOWN)
    refused = expect_failure(
        lambda: service.call("GetStatus", pb.GetStatusRequest(user_id="amy", validate=True))
    )
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "GARMIN_RATE_LIMITED"

    result = run_worker(
        make_config(service.target, garmin, tmp_path, all_users=True, concurrency=1, max_runtime=20)
    )

    outcomes = {user: line["outcome"] for user, line in result.users.items()}
    synced = {user for user, outcome in outcomes.items() if outcome == "SYNCED"}
    assert synced == {"ben", "cat"}, (
        f"amy's account cooldown stopped the run for every user: {outcomes}"
    )
