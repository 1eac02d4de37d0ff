"""The last wrong MFA code a challenge allows ends it and settles the user's MFA_PENDING
status (to NOT_CONNECTED) in SubmitMfa's transaction; that change is in the change log. Before,
it was not (its event answers an error), and the stream's last word stayed MFA_PENDING."""

from __future__ import annotations

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import PASSWORD
from tests.audit.trail_rows import entries
from tests.fixtures.servers import Replica, expect_failure


def test_used_up_challenge_settles_the_status_in_the_change_log(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    garmin.add_user("mia@example.com", PASSWORD, mfa=True, mfa_code="135790")
    answer = service.call(
        "Login", pb.LoginRequest(user_id="mia", email="mia@example.com", password=PASSWORD)
    )
    challenge = answer.mfa_challenge_id
    for _ in range(3):
        refused = expect_failure(
            lambda: service.call(
                "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="000000")
            )
        )
        assert refused.reason == "MFA_CODE_REJECTED"
    # The challenge is used up; the status has left MFA_PENDING (rows are read as seen).
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="mia")).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    log = entries(database_url, "mia")
    assert log[-1].state == "NOT_CONNECTED", [(e.rpc, e.state) for e in log]
