"""A sign-in stores only token texts the service can use, by the rules ImportSession holds
every session to (domain.validation): tokens a request header can carry, a token type an
Authorization header can open with, printable and bounded scope and jti.

Before, the DI ticket exchange behind Login (and SubmitMfa, ExchangeServiceTicket, and the
refresh, which shares it) stored any non-empty string as a token and str() of any token type
or scope. An access token no header could carry made GetStatus(validate) answer INTERNAL (an
uncaught UnicodeEncodeError), and a session with a token type of {"a": 1} was one its
worker_full holder could not report back (ReportRefreshed of the very session it was granted
answered INVALID_ARGUMENT). Now a token Garmin's answer holds that no header can carry makes
the answer unreadable (UNAVAILABLE GARMIN_UNAVAILABLE, nothing stored, as for any unreadable
answer), and an odd optional text falls back to its default. Found by review (s27).
"""

from __future__ import annotations

import base64
import json
import time

import grpc
import pytest

from auth_service.domain.policies import DiSettings, LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)


def _jwt() -> str:
    """A DI access token as Garmin issues it: a JWT naming the client id the sign-in used."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    claims = {"client_id": DiSettings().client_ids[0], "exp": int(time.time()) + 3600}
    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


@pytest.mark.parametrize("access_token", ["a b\u20ac", "x" * 9000])
def test_a_token_no_header_can_carry_is_no_sign_in(
    service_factory: ServiceFactory, garmin: GarminEmulator, access_token: str
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("odd@example.com", PASSWORD)
    body = json.dumps({"access_token": access_token, "refresh_token": "r", "expires_in": 3600})
    garmin.fail_next(DI_TOKEN_PATH, 200, body=body)

    failure = expect_failure(lambda: login(replica, "odd", "odd@example.com"))

    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE")
    status = replica.call("GetStatus", pb.GetStatusRequest(user_id="odd")).status
    assert status.state != pb.SESSION_STATE_ACTIVE


def test_odd_optional_texts_do_not_make_a_session_its_holder_cannot_report_back(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("typ@example.com", PASSWORD)
    body = json.dumps(
        {
            "access_token": _jwt(),
            "refresh_token": "refresh-token-ok",
            "token_type": {"a": 1},
            "scope": "\x00" * 3,
            "jti": ["j"],
            "expires_in": 3600,
        }
    )
    garmin.fail_next(DI_TOKEN_PATH, 200, body=body)
    assert login(replica, "typ", "typ@example.com").outcome == pb.LOGIN_OUTCOME_AUTHENTICATED

    lease = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="typ", holder="w"), role="worker_full"
    )
    assert lease.session.oauth2.token_type == "bearer"
    report = pb.ReportRefreshedRequest(
        lease_id=lease.lease.lease_id,
        session=lease.session,
        session_version=lease.status.session_version,
    )
    # The session it was granted, unchanged, is one it may hand back.
    replica.call("ReportRefreshed", report, role="worker_full")
