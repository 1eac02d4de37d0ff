"""A SubmitMfa that arrives after its challenge's expiry settles the user's MFA_PENDING (the
refusal is MFA_CHALLENGE_NOT_FOUND), and the change stream carries that, as it does when
housekeeping settles the row (test_abandoned_mfa.py). Before, the late SubmitMfa settled the
row and recorded nothing, and the housekeeping pass then found nothing to settle: the change
stream's last word for the user stayed MFA_PENDING for ever while GetStatus read
NOT_CONNECTED."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import PASSWORD
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.stream import Follower, watch
from tests.stream.conftest import FAST_STREAM


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_late_submit_mfa_still_reaches_the_change_stream(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    login = replace(service_factory.base_settings.login, mfa_challenge_ttl_seconds=1.0)
    replica = service_factory.start(stream=FAST_STREAM, login=login)
    garmin.add_user("lia@example.com", PASSWORD, mfa=True, mfa_code="135790")
    follower = Follower(watch(replica.stub, after_cursor="0", user_id="lia")).start()
    answer = replica.call(
        "Login", pb.LoginRequest(user_id="lia", email="lia@example.com", password=PASSWORD)
    )
    assert answer.mfa_challenge_id
    [pending] = follower.wait_changes(1)
    assert pending.status.state == pb.SESSION_STATE_MFA_PENDING
    time.sleep(1.5)  # the challenge expires unanswered...
    # ...and the user types the code a moment too late.
    late = pb.SubmitMfaRequest(mfa_challenge_id=answer.mfa_challenge_id, code="135790")
    refused = expect_failure(lambda: replica.call("SubmitMfa", late))
    assert refused.code == grpc.StatusCode.NOT_FOUND
    replica.running.application.use_cases.housekeeping.run_once()  # the background pass
    status = replica.call("GetStatus", pb.GetStatusRequest(user_id="lia")).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    try:
        follower.wait_changes(2, timeout=5)
    except AssertionError:
        pytest.fail(
            "GetStatus says NOT_CONNECTED (the late SubmitMfa settled the row), but the change "
            "stream's last word for lia is still MFA_PENDING: no change was appended"
        )
    finally:
        follower.cancel()
    assert follower.changes[-1].status.state == pb.SESSION_STATE_NOT_CONNECTED
