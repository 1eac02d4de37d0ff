"""A sign-in whose MFA challenge expires unanswered reaches the change stream, however its
MFA_PENDING is settled (GetStatus then reads NOT_CONNECTED):

- by housekeeping, named "Housekeeping" (no audit event: time caused it). Before, the settle
  wrote only the row, and a WatchSessionEvents consumer (and the webhook receiver) kept
  MFA_PENDING as the user's last state for ever;
- by a SubmitMfa that arrives after the expiry (refused MFA_CHALLENGE_NOT_FOUND). Before, it
  settled the row and recorded nothing, and housekeeping then found nothing to settle.

(A challenge ended by its last wrong code: tests/audit/test_change_log_mfa_settle.py.)"""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import PASSWORD
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.stream import Follower, watch
from tests.stream.conftest import FAST_STREAM

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])
CODE = "135790"


def _expired_sign_in(
    service_factory: ServiceFactory, garmin: GarminEmulator, user: str
) -> tuple[Replica, Follower, str]:
    """A replica, a follower of `user`'s changes that saw MFA_PENDING, and the id of the
    user's MFA challenge, expired unanswered."""
    login = replace(service_factory.base_settings.login, mfa_challenge_ttl_seconds=1.0)
    replica = service_factory.start(stream=FAST_STREAM, login=login)
    email = f"{user}@example.com"
    garmin.add_user(email, PASSWORD, mfa=True, mfa_code=CODE)
    follower = Follower(watch(replica.stub, after_cursor="0", user_id=user)).start()
    answer = replica.call("Login", pb.LoginRequest(user_id=user, email=email, password=PASSWORD))
    assert answer.mfa_challenge_id
    [pending] = follower.wait_changes(1)
    assert pending.status.state == pb.SESSION_STATE_MFA_PENDING
    time.sleep(1.5)  # the challenge expires unanswered
    return replica, follower, answer.mfa_challenge_id


def _settled_change(replica: Replica, follower: Follower, user: str, by: str) -> pb.SessionEvent:
    """The change after MFA_PENDING, once housekeeping's pass ran and GetStatus says
    NOT_CONNECTED (`by`: what settled the row, for the failure's message)."""
    replica.running.application.use_cases.housekeeping.run_once()  # as the background pass
    status = replica.call("GetStatus", pb.GetStatusRequest(user_id=user)).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    try:
        follower.wait_changes(2, timeout=5)
    except AssertionError:
        pytest.fail(
            f"GetStatus says NOT_CONNECTED ({by} settled the row), but the change stream's "
            f"last word for {user} is still MFA_PENDING: no change was appended"
        )
    finally:
        follower.cancel()
    assert follower.changes[-1].status.state == pb.SESSION_STATE_NOT_CONNECTED
    return follower.changes[-1]


def test_an_expired_mfa_challenge_reaches_the_change_stream(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica, follower, _challenge = _expired_sign_in(service_factory, garmin, "mia")
    change = _settled_change(replica, follower, "mia", by="housekeeping")
    assert change.rpc == "Housekeeping"


def test_a_late_submit_mfa_still_reaches_the_change_stream(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica, follower, challenge = _expired_sign_in(service_factory, garmin, "lia")
    # The user types the code a moment too late.
    late = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code=CODE)
    refused = expect_failure(lambda: replica.call("SubmitMfa", late))
    assert refused.code == grpc.StatusCode.NOT_FOUND
    _settled_change(replica, follower, "lia", by="the late SubmitMfa")
