"""Which SSO answers count as Garmin refusing the user's password or MFA code (README "Garmin
sign-in today" and the Errors table; the shared Garmin facts: "CAPTCHA_REQUIRED, HTML
pages, 403 and 429 mean 'blocked, try later'").

A refusal is an answer in readable JSON whose type refuses: any type but SUCCESSFUL and
MFA_REQUIRED (INVALID_USERNAME_PASSWORD on the login is the facts file's; no source names the MFA
step's). Everything else (a captcha, an HTML page, a SUCCESSFUL without its ticket) is
UNAVAILABLE GARMIN_UNAVAILABLE, whatever its HTTP status: nothing was refused. Both sign-in
flows (DI and garth's) go by the same rules.

Before, both flows' sso.py judged by the status first: a captcha or Cloudflare
page on a 401 told the user their password was wrong; on the MFA step a 400 was a wrong code
and a 401 dropped the challenge, whatever their body said; and a SUCCESSFUL without a ticket
was a refusal on both steps, where on the MFA step it spent one of the challenge's tries.
"""

from __future__ import annotations

import json

import grpc
import pytest

from auth_service.domain.errors import GarminCredentialsRejected
from auth_service.domain.policies import LoginFlow
from auth_service.upstream.sso_answers import SsoVerdict, judge
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import LOGIN_PATH, VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure

from .conftest import PASSWORD
from .di_provider import di_upstream

pytestmark = pytest.mark.timeout(60)


def sso_answer(kind: str, http_status: str = "OK") -> str:
    return json.dumps({"responseStatus": {"type": kind, "message": "", "httpStatus": http_status}})


CAPTCHA = sso_answer("CAPTCHA_REQUIRED", "UNAUTHORIZED")
SUCCESSFUL_WITHOUT_TICKET = sso_answer("SUCCESSFUL")
CLOUDFLARE_PAGE = "<!DOCTYPE html><html><body>Sorry, you have been blocked</body></html>"
# How many wrong codes end a challenge (README: "3 wrong codes end it").
MFA_TRIES = 3


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(401, CAPTCHA, id="captcha-on-401"),
        pytest.param(401, CLOUDFLARE_PAGE, id="html-page-on-401"),
        pytest.param(200, SUCCESSFUL_WITHOUT_TICKET, id="successful-without-ticket"),
    ],
)
@pytest.mark.parametrize("flow", [LoginFlow.DI, LoginFlow.GARTH])
def test_a_blocked_or_unreadable_login_answer_is_not_a_wrong_password(
    service_factory: ServiceFactory, garmin: GarminEmulator, status: int, body: str, flow: LoginFlow
) -> None:
    replica = service_factory.start(login_flow=flow)
    garmin.add_user("cap@example.com", PASSWORD)
    garmin.fail_next(LOGIN_PATH, status, body=body)
    request = pb.LoginRequest(user_id="cap", email="cap@example.com", password=PASSWORD)

    failure = expect_failure(lambda: replica.call("Login", request))

    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "GARMIN_UNAVAILABLE",
    ), failure.message


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(200, SUCCESSFUL_WITHOUT_TICKET, id="successful-without-ticket"),
        pytest.param(400, CAPTCHA, id="captcha-on-400"),
        pytest.param(401, CLOUDFLARE_PAGE, id="html-page-on-401"),
    ],
)
@pytest.mark.parametrize("flow", [LoginFlow.DI, LoginFlow.GARTH])
def test_a_blocked_or_unreadable_mfa_answer_neither_refuses_the_code_nor_spends_a_try(
    service_factory: ServiceFactory, garmin: GarminEmulator, status: int, body: str, flow: LoginFlow
) -> None:
    replica = service_factory.start(login_flow=flow)
    garmin.add_user("mfa@example.com", PASSWORD, mfa=True, mfa_code="123456")
    challenge = replica.call(
        "Login", pb.LoginRequest(user_id="mfa", email="mfa@example.com", password=PASSWORD)
    ).mfa_challenge_id
    submit = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="123456")

    garmin.fail_next(VERIFY_MFA_PATH, status, MFA_TRIES, body=body)
    for _ in range(MFA_TRIES):
        failure = expect_failure(lambda: replica.call("SubmitMfa", submit))
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "GARMIN_UNAVAILABLE",
        ), failure.message

    # Once Garmin answers again, the same challenge and code complete the sign-in.
    connected = replica.call("SubmitMfa", submit)
    assert connected.status.state == pb.SESSION_STATE_ACTIVE


def test_a_refusal_type_the_facts_do_not_name_is_still_a_refusal(
    emulator: GarminEmulator,
) -> None:
    # A locked account, say: "try later" would have the user's app retry into the lock.
    user = emulator.add_user("runner@example.com", PASSWORD)
    emulator.fail_next(LOGIN_PATH, 401, body=sso_answer("ACCOUNT_LOCKED", "UNAUTHORIZED"))

    with pytest.raises(GarminCredentialsRejected, match="ACCOUNT_LOCKED"):
        di_upstream(emulator).login(user.email, PASSWORD)


@pytest.mark.parametrize(
    ("status", "kind", "mfa_step", "verdict"),
    [
        (429, "INVALID_USERNAME_PASSWORD", False, SsoVerdict.RATE_LIMITED),  # 429 first
        (429, None, True, SsoVerdict.RATE_LIMITED),
        (401, "CAPTCHA_REQUIRED", False, SsoVerdict.BLOCKED),  # then a captcha, any status
        (200, "CAPTCHA_REQUIRED", True, SsoVerdict.BLOCKED),
        (401, "INVALID_USERNAME_PASSWORD", False, SsoVerdict.REFUSED),  # a 401 on the login
        (200, "SOME_NEW_REFUSAL", False, SsoVerdict.REFUSED),  # unnamed types refuse too
        (400, "INVALID_MFA_CODE", True, SsoVerdict.REFUSED),
        (401, "INVALID_MFA_CODE", True, SsoVerdict.GONE),  # a 401 on the MFA step
        (403, "INVALID_USERNAME_PASSWORD", False, SsoVerdict.UNREADABLE),  # the edge's status
        (503, "INVALID_MFA_CODE", True, SsoVerdict.UNREADABLE),
        (401, None, False, SsoVerdict.UNREADABLE),  # an HTML page
        (200, "SUCCESSFUL", False, SsoVerdict.UNREADABLE),  # accepting, but no ticket
    ],
)
def test_one_verdict_serves_both_flows(
    status: int, kind: str | None, mfa_step: bool, verdict: SsoVerdict
) -> None:
    """The order both providers apply (auth_service.upstream.sso_answers): 429, captcha,
    a refusal type (401 on the MFA step: the pending login is gone), else unreadable."""
    # (A 429 said in the body alone: tests/upstream/test_sso_body_rate_limit.py.)
    payload = None if kind is None else {"responseStatus": {"type": kind}}
    assert judge(status, payload, mfa_step=mfa_step) is verdict
