"""Both sign-in flows (GARMIN_AUTH_LOGIN_FLOW=di and garth) answer as the README's table says.
Before, after 9b4b081, the garth flow read a captcha body before the status, so a 429 whose
body said CAPTCHA_REQUIRED answered GARMIN_UNAVAILABLE and started no sign-in cooldown; and
its 401 on the MFA step (Garmin no longer holds the pending login) was a wrong code, where the
DI flow and the README say MFA_CHALLENGE_NOT_FOUND: log in again."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import LOGIN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct horse battery staple"
CAPTCHA = json.dumps(
    {
        "responseStatus": {
            "type": "CAPTCHA_REQUIRED",
            "message": "",
            "httpStatus": "TOO_MANY_REQUESTS",
        }
    }
)


@pytest.mark.parametrize("flow", [LoginFlow.DI, LoginFlow.GARTH])
def test_a_429_on_the_login_is_rate_limited_whatever_its_body(
    service_factory: ServiceFactory, garmin: GarminEmulator, flow: LoginFlow
) -> None:
    """README: "429 on login or MFA -> RESOURCE_EXHAUSTED GARMIN_RATE_LIMITED, and the
    account's sign-in cooldown starts". The garth flow checks the captcha type before the
    status, so a 429 whose JSON body says CAPTCHA_REQUIRED is UNAVAILABLE: no cooldown, and
    the next login goes to Garmin again."""
    replica = service_factory.start(login_flow=flow)
    garmin.add_user("ann@example.com", PASSWORD)
    garmin.fail_next(LOGIN_PATH, 429, body=CAPTCHA, retry_after=600)
    request = pb.LoginRequest(user_id="ann", email="ann@example.com", password=PASSWORD)

    first = expect_failure(lambda: replica.call("Login", request))
    assert (first.code, first.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "GARMIN_RATE_LIMITED",
    ), first.message

    calls = garmin.request_count(LOGIN_PATH)
    second = expect_failure(lambda: replica.call("Login", request))
    assert second.reason == "GARMIN_RATE_LIMITED"
    assert garmin.request_count(LOGIN_PATH) == calls  # the cooldown held Garmin back


@pytest.mark.parametrize("flow", [LoginFlow.DI, LoginFlow.GARTH])
def test_a_sign_in_garmin_forgot_asks_for_a_new_login_in_both_flows(
    service_factory: ServiceFactory, garmin: GarminEmulator, flow: LoginFlow
) -> None:
    """README: "such a JSON answer with a 401 on the MFA step (Garmin no longer holds the
    pending login) -> NOT_FOUND MFA_CHALLENGE_NOT_FOUND; the challenge is dropped". The garth
    flow answers MFA_CODE_REJECTED: the user is told the right code is wrong."""
    replica = service_factory.start(login_flow=flow)
    garmin.add_user("lea@example.com", PASSWORD, mfa=True, mfa_code="445566")
    garmin.di.pending_mfa_ttl_seconds = 0.5
    challenge = replica.call(
        "Login", pb.LoginRequest(user_id="lea", email="lea@example.com", password=PASSWORD)
    ).mfa_challenge_id
    time.sleep(1.0)
    submit = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="445566")

    gone = expect_failure(lambda: replica.call("SubmitMfa", submit))

    assert (gone.code, gone.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "MFA_CHALLENGE_NOT_FOUND",
    ), gone.message
