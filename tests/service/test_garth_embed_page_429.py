"""garth's sign-in loads Garmin's SSO embed page between the SSO's answer and the ticket
exchange, "best-effort": garth swallows any HTTP error there, a 429 included. The sign-in then
succeeded, and nothing of that 429 reached the gate: no account cooldown, no breaker count, so
every replica went on calling the SSO that had just asked us to stop.

Now a 429 a successful call went on without is honoured as any other (the sign-in keeps its
tokens: the ticket is spent): the account's sign-ins wait out the cooldown, the SSO's 429 is
counted, its breaker opens when due. And the page load stays best-effort for a lost answer too
(garth let a timeout or a reset fail a sign-in whose ticket Garmin had already issued).
"""

from __future__ import annotations

import grpc
import pytest

from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import EMBED_PATH, LOGIN_PATH, PREAUTHORIZED_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure, failure_of
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

RETRY_AFTER = 600  # seconds Garmin's SSO asks for
MFA_CODE = "135790"


def test_a_429_on_the_embed_page_keeps_the_sign_in_and_holds_the_sso_back(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    limits = GarminLimitSettings(breaker_threshold=1)
    first = service_factory.start(login_flow=LoginFlow.GARTH, limits=limits)
    second = service_factory.start(login_flow=LoginFlow.GARTH, limits=limits)
    garmin.add_user("ada@example.com", PASSWORD)
    garmin.add_user("bea@example.com", PASSWORD)

    garmin.fail_next(EMBED_PATH, 429, retry_after=RETRY_AFTER)
    answer = login(first, "ada", "ada@example.com")
    assert answer.outcome == pb.LOGIN_OUTCOME_AUTHENTICATED  # the ticket's tokens are kept
    status = first.call("GetStatus", pb.GetStatusRequest(user_id="ada"))
    assert status.status.state == pb.SESSION_STATE_ACTIVE

    # Another account's sign-in on another replica, well within the SSO's Retry-After.
    sso_logins = garmin.request_count(LOGIN_PATH)
    try:
        login(second, "bea", "bea@example.com")
    except grpc.RpcError as error:
        refused = failure_of(error)
    else:
        pytest.fail(
            f"a sign-in reached Garmin's SSO {garmin.request_count(LOGIN_PATH) - sso_logins} "
            f"time(s) after it answered 429 (Retry-After {RETRY_AFTER}s) to the embed page"
        )
    assert refused.reason == "GARMIN_RATE_LIMITED"
    assert refused.retry_seconds is not None
    assert refused.retry_seconds > RETRY_AFTER - 30
    assert garmin.request_count(LOGIN_PATH) == sso_logins

    # The account that met the 429 waits out the sign-in cooldown (at least Garmin's wait).
    again = expect_failure(lambda: login(second, "ada", "ada@example.com"))
    assert again.reason == "GARMIN_RATE_LIMITED"
    assert again.retry_seconds is not None
    assert again.retry_seconds > RETRY_AFTER - 30
    assert garmin.request_count(LOGIN_PATH) == sso_logins


def test_a_429_on_the_embed_page_after_the_mfa_code_keeps_the_sign_in_and_its_cooldown(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.GARTH)
    garmin.add_user("cy@example.com", PASSWORD, mfa=True, mfa_code=MFA_CODE)
    challenge = login(replica, "cy", "cy@example.com").mfa_challenge_id

    garmin.fail_next(EMBED_PATH, 429, retry_after=RETRY_AFTER)
    done = replica.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code=MFA_CODE))
    assert done.status.state == pb.SESSION_STATE_ACTIVE

    sso_logins = garmin.request_count(LOGIN_PATH)
    again = expect_failure(lambda: login(replica, "cy", "cy@example.com"))
    assert again.reason == "GARMIN_RATE_LIMITED"
    assert again.retry_seconds is not None
    assert again.retry_seconds > RETRY_AFTER - 30
    assert garmin.request_count(LOGIN_PATH) == sso_logins


@pytest.mark.parametrize("fault", ["reset", 503])
def test_a_lost_or_failed_embed_page_does_not_lose_the_issued_ticket(
    service_factory: ServiceFactory, garmin: GarminEmulator, fault: str | int
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.GARTH)
    garmin.add_user("dee@example.com", PASSWORD)

    garmin.fail_next(EMBED_PATH, fault, count=10)
    answer = login(replica, "dee", "dee@example.com")
    assert answer.outcome == pb.LOGIN_OUTCOME_AUTHENTICATED


def test_a_429_on_the_embed_page_counts_when_the_ticket_exchange_then_fails(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """Found by review of the fix: only a sign-in that succeeded noted the 429s it went past."""
    limits = GarminLimitSettings(breaker_threshold=1)
    first = service_factory.start(login_flow=LoginFlow.GARTH, limits=limits)
    second = service_factory.start(login_flow=LoginFlow.GARTH, limits=limits)
    garmin.add_user("eve@example.com", PASSWORD)
    garmin.add_user("fay@example.com", PASSWORD)

    garmin.fail_next(EMBED_PATH, 429, retry_after=RETRY_AFTER)
    garmin.fail_next(PREAUTHORIZED_PATH, 503, count=10)
    failed = expect_failure(lambda: login(first, "eve", "eve@example.com"))
    assert failed.reason == "GARMIN_UNAVAILABLE"
    garmin.clear_faults()

    sso_logins = garmin.request_count(LOGIN_PATH)
    refused = expect_failure(lambda: login(second, "fay", "fay@example.com"))
    assert refused.reason == "GARMIN_RATE_LIMITED"
    assert garmin.request_count(LOGIN_PATH) == sso_logins
