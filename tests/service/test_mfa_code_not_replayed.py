"""A code Garmin accepted is never sent to Garmin again.

Once Garmin's verifyCode answered SUCCESSFUL (the code judged, the pending login spent), a
failure of the ticket exchange that follows (a 503, a timeout, a 429, an unreadable answer)
answers the SubmitMfa UNAVAILABLE or RESOURCE_EXHAUSTED. Before, it left the challenge
usable, so the retry the caller is told to make sent the code to Garmin's verifyCode again,
on a sign-in Garmin had spent. Now the challenge is over: the retry answers
MFA_CHALLENGE_NOT_FOUND (log in again) without calling Garmin. Two replicas on one database,
the DI sign-in over HTTP to the emulator. Found by review (s27).
"""

from __future__ import annotations

import grpc
import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("status", "code"),
    [(503, grpc.StatusCode.UNAVAILABLE), (429, grpc.StatusCode.RESOURCE_EXHAUSTED)],
)
def test_a_code_garmin_accepted_is_not_sent_again(
    service_factory: ServiceFactory, garmin: GarminEmulator, status: int, code: grpc.StatusCode
) -> None:
    first = service_factory.start(login_flow=LoginFlow.DI)
    second = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("rex@example.com", PASSWORD, mfa=True, mfa_code="246810")
    challenge = login(first, "rex", "rex@example.com").mfa_challenge_id
    submit = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="246810")

    garmin.fail_next(DI_TOKEN_PATH, status)  # the exchange of the ticket the code earned fails
    failure = expect_failure(lambda: first.call("SubmitMfa", submit))
    assert failure.code == code

    retry = expect_failure(lambda: second.call("SubmitMfa", submit))

    assert retry.reason == "MFA_CHALLENGE_NOT_FOUND"
    assert garmin.request_count(VERIFY_MFA_PATH) == 1, (
        "the MFA code Garmin had already accepted was sent to Garmin again"
    )
