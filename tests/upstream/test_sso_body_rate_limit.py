"""Garmin's SSO may say "429" in its JSON body on another status
({"error": {"status-code": "429"}}): python-garminconnect reads that as "too many requests" on
the login and on the MFA step. Both sign-in flows now take it for rate limiting, as a 429:
RESOURCE_EXHAUSTED GARMIN_RATE_LIMITED, and the account's sign-in cooldown holds its next
sign-in back on every replica. Before, it was GARMIN_UNAVAILABLE with no cooldown, and callers
retrying sent the account's logins to Garmin again and again."""

from __future__ import annotations

import json

import grpc
import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import LOGIN_PATH, VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.parametrize("flow", [LoginFlow.DI, LoginFlow.GARTH]),
]

PASSWORD = "correct horse battery staple"
SAYS_429 = json.dumps({"error": {"status-code": "429", "status-message": "Too Many Requests"}})


def test_a_login_answered_429_in_its_body_is_rate_limited_on_every_replica(
    service_factory: ServiceFactory, garmin: GarminEmulator, flow: LoginFlow
) -> None:
    first, second = service_factory.start(login_flow=flow), service_factory.start(login_flow=flow)
    garmin.add_user("jay@example.com", PASSWORD)
    garmin.fail_next(LOGIN_PATH, 200, body=SAYS_429, content_type="application/json")
    request = pb.LoginRequest(user_id="jay", email="jay@example.com", password=PASSWORD)

    limited = expect_failure(lambda: first.call("Login", request))
    assert (limited.code, limited.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "GARMIN_RATE_LIMITED",
    ), limited.message
    calls = garmin.request_count(LOGIN_PATH)
    again = expect_failure(lambda: second.call("Login", request))
    assert again.reason == "GARMIN_RATE_LIMITED"
    assert garmin.request_count(LOGIN_PATH) == calls  # the cooldown held Garmin back


def test_an_mfa_step_answered_429_in_its_body_is_rate_limited(
    service_factory: ServiceFactory, garmin: GarminEmulator, flow: LoginFlow
) -> None:
    replica = service_factory.start(login_flow=flow)
    garmin.add_user("kai@example.com", PASSWORD, mfa=True, mfa_code="112233")
    challenge = replica.call(
        "Login", pb.LoginRequest(user_id="kai", email="kai@example.com", password=PASSWORD)
    ).mfa_challenge_id
    garmin.fail_next(VERIFY_MFA_PATH, 200, body=SAYS_429, content_type="application/json")
    submit = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="112233")

    limited = expect_failure(lambda: replica.call("SubmitMfa", submit))

    assert (limited.code, limited.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "GARMIN_RATE_LIMITED",
    ), limited.message
