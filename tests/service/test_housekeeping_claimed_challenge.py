"""Housekeeping keeps an MFA challenge past its expiry while a SubmitMfa that claimed it in
time still waits for Garmin. Before, it deleted the challenge (and settled the session), so a
code Garmin accepted was answered MFA_CHALLENGE_NOT_FOUND and its session thrown away."""

from __future__ import annotations

import threading
import time

import grpc

from auth_service.domain.policies import LoginSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory

PASSWORD = "correct horse battery staple"


def test_housekeeping_keeps_a_challenge_whose_submission_is_in_flight(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    # A challenge that stays usable for 1 s; the code is submitted well within it.
    service = service_factory.start(
        login=LoginSettings(limit=20, window_seconds=3600, mfa_challenge_ttl_seconds=1.0)
    )
    garmin.add_user("ivy@example.com", PASSWORD, mfa=True, mfa_code="246810")
    challenge = service.call(
        "Login", pb.LoginRequest(user_id="ivy", email="ivy@example.com", password=PASSWORD)
    ).mfa_challenge_id
    # Garmin takes 1.6 s to check the code (a slow answer; the service allows 2 s + retries).
    garmin.fail_next("/mobile/api/mfa/verifyCode", None, count=1, delay=1.6)
    outcome: list[object] = []

    def submit() -> None:
        try:
            answer = service.call(
                "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="246810")
            )
            outcome.append(answer.status.state)
        except grpc.RpcError as error:
            outcome.append(error.code())

    thread = threading.Thread(target=submit)
    thread.start()
    # The background pass of any replica runs while Garmin is still answering, after the
    # challenge's expiry but within the submission's claim.
    time.sleep(1.25)
    report = service.running.application.use_cases.housekeeping.run_once()
    thread.join()
    # Garmin accepted the code in time: the user must be connected ...
    assert outcome == [pb.SESSION_STATE_ACTIVE]
    # ... and housekeeping must leave a claimed challenge to its submission.
    assert report.challenges_deleted == 0
