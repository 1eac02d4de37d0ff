"""Odd Garmin answer in the sign-in path: an MFA_REQUIRED answer whose Set-Cookie value is
UTF-8 beyond Latin-1 (curl_cffi decodes the answer's headers as UTF-8 when they all are).
The pending login keeps the cookie as decoded. Before, SubmitMfa handed it to curl_cffi in
its Cookie header, whose Latin-1 encoding raised UnicodeEncodeError (only CurlRequestException
and AnswerTooLarge were caught): SubmitMfa answered INTERNAL, on every try. Now a cookie no
header can carry back is left out, and Garmin judges the code without it. Garmin is played by
a plain HTTP server (tests/fixtures/http_servers.RecordingServer) routed to as
GARMIN_AUTH_UPSTREAM_URL, because the emulator sets only its own cookies. Found by review
(s27)."""

from __future__ import annotations

import dataclasses
import json

import grpc
import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.http_servers import RecordingServer
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD

pytestmark = pytest.mark.timeout(60)

MFA_REQUIRED = json.dumps(
    {
        "responseStatus": {"type": "MFA_REQUIRED", "message": "", "httpStatus": "OK"},
        "customerMfaInfo": {"mfaLastMethodUsed": "email"},
    }
).encode()


def test_submit_mfa_with_a_utf8_cookie_is_not_internal(service_factory: ServiceFactory) -> None:
    # "€" in UTF-8, written as the Latin-1 text http.server encodes headers with.
    cookie = "SESSION=abc\u00e2\u0082\u00ac; Path=/; HttpOnly"
    garmin = RecordingServer(
        (200, {"Content-Type": "application/json", "Set-Cookie": cookie}, MFA_REQUIRED)
    )
    try:
        upstream = dataclasses.replace(service_factory.base_settings.upstream, base_url=garmin.url)
        replica = service_factory.start(login_flow=LoginFlow.DI, upstream=upstream)
        answer = replica.call(
            "Login", pb.LoginRequest(user_id="eur", email="eur@example.com", password=PASSWORD)
        )
        assert answer.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
        submit = pb.SubmitMfaRequest(mfa_challenge_id=answer.mfa_challenge_id, code="123456")
        failure = expect_failure(lambda: replica.call("SubmitMfa", submit))
    finally:
        garmin.close()
    assert failure.code != grpc.StatusCode.INTERNAL, (failure.code, failure.reason)
