"""The sign-in cooldown lasts GARMIN_AUTH_SIGNIN_COOLDOWN (2 hours) "or Garmin's Retry-After if
longer": the Retry-After as Garmin asked, not as the gate cut it to
GARMIN_AUTH_RATE_LIMIT_MAX_WAIT (1 hour) for the account's other calls. Before, a sign-in 429
asking for 3 hours held the account's logins back for 2 hours only, and the next Login went to
Garmin while Garmin still refused it.

README, Configuration: GARMIN_AUTH_SIGNIN_COOLDOWN "seconds an account's logins are refused
(GARMIN_RATE_LIMITED, without calling Garmin) after Garmin's sign-in answered it 429; Garmin's
Retry-After wins when longer".
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import BLOCK_RATE_LIMITED, LOGIN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure, failure_of
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

USER, EMAIL = "rae", "rae@example.com"
GARMINS_RETRY_AFTER = 3 * 3600  # longer than the 2-hour sign-in cooldown
SIGNIN_COOLDOWN = 2 * 3600  # the default


def test_a_sign_in_retry_after_longer_than_the_cooldown_wins(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    replica = service_factory.start(login_flow=LoginFlow.DI, clock=clock)
    garmin.add_user(EMAIL, PASSWORD)

    garmin.block_logins(BLOCK_RATE_LIMITED, retry_after=GARMINS_RETRY_AFTER)
    limited = expect_failure(lambda: login(replica, USER, EMAIL))
    assert (limited.reason, limited.retry_seconds) == ("GARMIN_RATE_LIMITED", GARMINS_RETRY_AFTER)

    # Past the configured cooldown, still within the wait Garmin asked for.
    clock.advance(SIGNIN_COOLDOWN + 60)
    before = garmin.request_count(LOGIN_PATH)
    try:
        outcome = pb.LoginOutcome.Name(login(replica, USER, EMAIL).outcome)
    except grpc.RpcError as error:
        outcome = failure_of(error).reason
    reached = garmin.request_count(LOGIN_PATH) - before
    assert (outcome, reached) == ("GARMIN_RATE_LIMITED", 0), (
        f"Garmin asked for {GARMINS_RETRY_AFTER}s (RetryInfo answered: "
        f"{limited.retry_seconds}s); {SIGNIN_COOLDOWN + 60}s later the next Login "
        f"reached Garmin ({reached} call) and answered {outcome}"
    )


def test_a_retry_after_beyond_a_day_holds_sign_ins_back_for_a_day(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    replica = service_factory.start(login_flow=LoginFlow.DI, clock=clock)
    garmin.add_user(EMAIL, PASSWORD)
    garmin.block_logins(BLOCK_RATE_LIMITED, retry_after=10 * 86400)

    limited = expect_failure(lambda: login(replica, USER, EMAIL))

    # A header that could say anything is bounded (policies.SIGNIN_RETRY_AFTER_MAX_SECONDS).
    assert (limited.reason, limited.retry_seconds) == ("GARMIN_RATE_LIMITED", 86400)
