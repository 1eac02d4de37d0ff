"""A sign-in whose MFA challenge expires unanswered reaches the change stream: housekeeping
settles the user's MFA_PENDING (GetStatus then reads NOT_CONNECTED) and the change log carries
that status, named "Housekeeping" (no audit event: time caused it). Before, the settle wrote
only the row, and a WatchSessionEvents consumer (and the webhook receiver) kept MFA_PENDING as
the user's last state for ever. (A challenge ended by its last wrong code:
tests/audit/test_change_log_mfa_settle.py.)"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import PASSWORD
from tests.fixtures.servers import ServiceFactory
from tests.stream import Follower, watch
from tests.stream.conftest import FAST_STREAM


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_expired_mfa_challenge_reaches_the_change_stream(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    login = replace(service_factory.base_settings.login, mfa_challenge_ttl_seconds=1.0)
    replica = service_factory.start(stream=FAST_STREAM, login=login)
    garmin.add_user("mia@example.com", PASSWORD, mfa=True, mfa_code="135790")
    follower = Follower(watch(replica.stub, after_cursor="0", user_id="mia")).start()
    answer = replica.call(
        "Login", pb.LoginRequest(user_id="mia", email="mia@example.com", password=PASSWORD)
    )
    assert answer.mfa_challenge_id
    [pending] = follower.wait_changes(1)
    assert pending.status.state == pb.SESSION_STATE_MFA_PENDING
    time.sleep(1.5)  # the challenge expires unanswered
    replica.running.application.use_cases.housekeeping.run_once()  # as the background pass
    status = replica.call("GetStatus", pb.GetStatusRequest(user_id="mia")).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    try:
        follower.wait_changes(2, timeout=5)
    except AssertionError:
        pytest.fail(
            "GetStatus says NOT_CONNECTED (housekeeping wrote it), but the change stream's "
            "last word for mia is still MFA_PENDING: no change was appended"
        )
    finally:
        follower.cancel()
    assert follower.changes[-1].status.state == pb.SESSION_STATE_NOT_CONNECTED
    assert follower.changes[-1].rpc == "Housekeeping"
