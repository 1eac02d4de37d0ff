"""A second SubmitMfa that arrives after the challenge's expiry, while a first one that claimed
the challenge in time still waits for Garmin, must leave the challenge to the first (README:
housekeeping keeps a claimed challenge for the same reason). Before, the late submission
deleted the expired challenge under the live claim; Garmin accepted the first one's code, a
ticket was exchanged, and the tokens were thrown away with MFA_CHALLENGE_NOT_FOUND."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from auth_service.domain.policies import LoginFlow, LoginSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure

pytestmark = pytest.mark.timeout(60)
PASSWORD = "correct horse battery staple"


def test_a_late_second_submission_does_not_kill_a_claimed_challenge(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    settings = LoginSettings(limit=20, window_seconds=3600, mfa_challenge_ttl_seconds=1.0)
    first = service_factory.start(login_flow=LoginFlow.DI, login=settings)
    second = service_factory.start(login_flow=LoginFlow.DI, login=settings)
    garmin.add_user("ivy@example.com", PASSWORD, mfa=True, mfa_code="246810")
    challenge = first.call(
        "Login", pb.LoginRequest(user_id="ivy", email="ivy@example.com", password=PASSWORD)
    ).mfa_challenge_id
    # Garmin takes 1.6 s to check the code (within the service's 2 s timeout).
    garmin.fail_next(VERIFY_MFA_PATH, None, count=1, delay=1.6)
    submit = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="246810")
    outcome: list[object] = []

    def submit_first() -> None:
        try:
            outcome.append(first.call("SubmitMfa", submit).status.state)
        except grpc.RpcError as error:
            outcome.append(error.code())

    thread = threading.Thread(target=submit_first)
    thread.start()
    time.sleep(1.25)  # past the challenge's expiry, within the first submission's claim
    late = expect_failure(lambda: second.call("SubmitMfa", submit))
    thread.join()

    # The late one is refused (busy, or not found) ...
    assert late.reason in {"MFA_CHALLENGE_BUSY", "MFA_CHALLENGE_NOT_FOUND"}
    # ... but Garmin accepted the first one's code in time and issued the tokens ...
    assert garmin.ticket_exchange_count("ivy@example.com") == 1
    # ... so the user must be connected.
    assert outcome == [pb.SESSION_STATE_ACTIVE]
