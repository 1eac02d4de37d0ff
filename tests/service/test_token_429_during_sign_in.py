"""A 429 from diauth's token endpoint during a Login's or SubmitMfa's ticket exchange holds the
account back for that answer's own Retry-After only. Before, it started the account's 2-hour
*sign-in* cooldown (GARMIN_AUTH_SIGNIN_COOLDOWN) as if the SSO had answered 429: Login 6 s
later answered GARMIN_RATE_LIMITED with RetryInfo 7194 s without calling Garmin. The README
(GARMIN_AUTH_SIGNIN_COOLDOWN; "How we treat Garmin's limits") keeps that cooldown for the
SSO's own 429, as the facts file's 2-hour back-off is the SSO login's.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, LOGIN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure, failure_of
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

TOKEN_RETRY_AFTER = 5  # diauth: come back in 5 seconds


def test_a_token_endpoint_429_during_login_does_not_start_the_two_hour_signin_cooldown(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    replica = service_factory.start(login_flow=LoginFlow.DI, clock=clock)
    garmin.add_user("tia@example.com", PASSWORD)

    # Garmin's SSO accepts the password; diauth answers the ticket exchange 429.
    garmin.fail_next(DI_TOKEN_PATH, 429, retry_after=TOKEN_RETRY_AFTER)
    first = expect_failure(lambda: login(replica, "tia", "tia@example.com"))
    assert first.reason == "GARMIN_RATE_LIMITED"

    # diauth's Retry-After has passed: the user tries again.
    clock.advance(TOKEN_RETRY_AFTER + 1)
    before = garmin.request_count(LOGIN_PATH)
    try:
        answer = login(replica, "tia", "tia@example.com")
    except grpc.RpcError as error:
        refused = failure_of(error)
        pytest.fail(
            f"Login {TOKEN_RETRY_AFTER + 1}s after a {TOKEN_RETRY_AFTER}s token-endpoint 429 "
            f"answered {refused.code.name} {refused.reason} with RetryInfo "
            f"{refused.retry_seconds}s (the SSO sign-in cooldown), and Garmin's sign-in was "
            f"called {garmin.request_count(LOGIN_PATH) - before} times"
        )
    assert answer.outcome == pb.LOGIN_OUTCOME_AUTHENTICATED


def test_a_token_endpoint_429_after_an_accepted_mfa_code_does_not_block_the_next_login(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """The same through SubmitMfa: Garmin's SSO accepted the code (its pending login is spent),
    diauth answered the ticket exchange 429; the user has to log in again, and may once the
    token endpoint's Retry-After has passed."""
    clock = FakeClock(datetime.now(UTC))
    replica = service_factory.start(login_flow=LoginFlow.DI, clock=clock)
    garmin.add_user("uma@example.com", PASSWORD, mfa=True, mfa_code="246810")
    challenge = login(replica, "uma", "uma@example.com").mfa_challenge_id

    garmin.fail_next(DI_TOKEN_PATH, 429, retry_after=TOKEN_RETRY_AFTER)
    submitted = expect_failure(
        lambda: replica.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="246810")
        )
    )
    assert submitted.reason == "GARMIN_RATE_LIMITED"

    clock.advance(TOKEN_RETRY_AFTER + 1)
    before = garmin.request_count(LOGIN_PATH)
    try:
        again = login(replica, "uma", "uma@example.com")
    except grpc.RpcError as error:
        refused = failure_of(error)
        pytest.fail(
            f"Login {TOKEN_RETRY_AFTER + 1}s after a {TOKEN_RETRY_AFTER}s token-endpoint 429 "
            f"answered {refused.code.name} {refused.reason} with RetryInfo "
            f"{refused.retry_seconds}s, Garmin's sign-in called "
            f"{garmin.request_count(LOGIN_PATH) - before} times"
        )
    assert again.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
