"""A session Garmin rejects during a refresh the service makes (RefreshLease, the central
refresh of a grant) ends AUTH_EXPIRED with its audit event AND its change-log entry, so
WatchSessionEvents and webhooks say the session ended (README "Change stream and webhooks":
an application prompts the user to reconnect the moment it does). Before, the change log took
only OK events, and these answer an error: the stream never said the session ended.
"""

from __future__ import annotations

import grpc

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import connect, lease
from tests.audit.trail_rows import entries, events
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.stream import Follower, watch
from tests.stream.conftest import FAST_STREAM


def test_refresh_lease_rejection_appends_the_auth_expired_change(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    connect(service, garmin, "rl")
    granted = lease(service, "rl")
    garmin.revoke_tokens("rl@example.com")
    ended = expect_failure(
        lambda: service.call(
            "RefreshLease",
            pb.RefreshLeaseRequest(
                lease_id=granted.lease.lease_id,
                session_version=granted.status.session_version,
            ),
            role="worker",
        )
    )
    assert ended.reason == "SESSION_NOT_ACTIVE"
    # The audit trail has the invalidation...
    assert events(database_url, "rl")[-1] == (
        "RefreshLease",
        "rl",
        "FAILED_PRECONDITION",
        "SESSION_NOT_ACTIVE",
    )
    # ... and the row is AUTH_EXPIRED ...
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="rl")).status
    assert status.state == pb.SESSION_STATE_AUTH_EXPIRED
    # ... so the change log must end with it.
    log = entries(database_url, "rl")
    assert [(e.rpc, e.state) for e in log][-1] == ("RefreshLease", "AUTH_EXPIRED"), [
        (e.rpc, e.state) for e in log
    ]


def test_central_refresh_rejection_appends_the_auth_expired_change(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    connect(service, garmin, "cr", expired=True)
    garmin.revoke_tokens("cr@example.com")
    refused = expect_failure(lambda: lease(service, "cr"))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_ACTIVE",
    )
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="cr")).status
    assert status.state == pb.SESSION_STATE_AUTH_EXPIRED
    log = entries(database_url, "cr")
    # ImportSession (ACTIVE), LeaseSession (grant, ACTIVE with lease), then the invalidation.
    assert [(e.rpc, e.state) for e in log][-1] == ("LeaseSession", "AUTH_EXPIRED"), [
        (e.rpc, e.state) for e in log
    ]


def test_watch_reports_the_session_ended_by_refresh_lease(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """The same through WatchSessionEvents: the last event of the user is not AUTH_EXPIRED."""
    service = service_factory.start(stream=FAST_STREAM)
    connect(service, garmin, "wr")
    granted = lease(service, "wr")
    garmin.revoke_tokens("wr@example.com")
    expect_failure(
        lambda: service.call(
            "RefreshLease",
            pb.RefreshLeaseRequest(
                lease_id=granted.lease.lease_id,
                session_version=granted.status.session_version,
            ),
            role="worker",
        )
    )
    follower = Follower(watch(service.stub, after_cursor="0", user_id="wr")).start()
    try:
        follower.wait_changes(2)  # ImportSession, LeaseSession
        follower.wait_heartbeat()
        states = [(e.rpc, e.status.state) for e in follower.changes]
    finally:
        follower.cancel()
    assert states[-1] == ("RefreshLease", pb.SESSION_STATE_AUTH_EXPIRED), states
