"""A SubmitMfa whose code never left this replica burns none of the user's tries.

A replica that cannot reach Garmin (connection refused through curl_cffi, DI's default; or
connects timing out through garmin_client's transport, garth's and DI plain's) answers
UNAVAILABLE, counts the code as judged and keeps the challenge claimed: the user's retry with
the right code, on a healthy replica, answers MFA_CHALLENGE_BUSY instead of signing in, and
three such failures end the challenge. RELIABILITY 7 counts only "a timeout or a broken
connection after it was sent".
"""

from __future__ import annotations

import grpc
import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login
from tests.upstream.test_unanswered_sso import (  # noqa: F401 (a fixture)
    _closed_port,
    _guard_connect_hangs,
    unaccepting_listener,
)

pytestmark = pytest.mark.timeout(90)


def _submit_elsewhere_then_retry(
    service_factory: ServiceFactory, garmin: GarminEmulator, flow: LoginFlow, dead_url: str
) -> str:
    healthy = service_factory.start(login_flow=flow)
    cut_off = service_factory.start(
        login_flow=flow,
        upstream=service_factory.base_settings.upstream.__class__(
            consumer_key=service_factory.base_settings.upstream.consumer_key,
            consumer_secret=service_factory.base_settings.upstream.consumer_secret,
            base_url=dead_url,
            timeout_seconds=2.0,
            retries=1,
        ),
    )
    garmin.add_user("cut@example.com", PASSWORD, mfa=True, mfa_code="112233")
    challenge = login(healthy, "cut", "cut@example.com").mfa_challenge_id
    request = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="112233")

    failed = expect_failure(lambda: cut_off.call("SubmitMfa", request))
    assert failed.code == grpc.StatusCode.UNAVAILABLE
    try:
        answer = healthy.call("SubmitMfa", request)
        return pb.SessionState.Name(answer.status.state) if hasattr(answer, "status") else "OK"
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"


def test_di_refused_connection_does_not_hold_the_challenge(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    retried = _submit_elsewhere_then_retry(
        service_factory, garmin, LoginFlow.DI, f"http://127.0.0.1:{_closed_port()}"
    )
    assert "ABORTED" not in retried, f"the right code after a refused connection: {retried}"
    assert "UNAVAILABLE" not in retried, f"the right code after a refused connection: {retried}"


def test_garth_connect_timeout_does_not_hold_the_challenge(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    unaccepting_listener: int,  # noqa: F811
) -> None:
    _guard_connect_hangs(unaccepting_listener)
    retried = _submit_elsewhere_then_retry(
        service_factory, garmin, LoginFlow.GARTH, f"http://127.0.0.1:{unaccepting_listener}"
    )
    assert "ABORTED" not in retried, f"the right code after connects never made: {retried}"
    assert "UNAVAILABLE" not in retried, f"the right code after connects never made: {retried}"
