"""WatchSessionEvents on one and several in-process replicas: replay then follow, filters,
heartbeats, limits and the end of a stream when the replica stops (both backends)."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import grpc
import pytest

from auth_service.domain.changes import format_cursor
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import failure_of
from tests.reliability import audit_events, wait_until
from tests.stream import Follower, connect, disconnect, positions, watch
from tests.stream.conftest import FAST_STREAM, StartReplica


def test_replay_then_follow(start_replica: StartReplica) -> None:
    replica = start_replica()
    for user in ("ann", "bob", "cat"):
        connect(replica.stub, user)
    disconnect(replica.stub, "bob")
    follower = Follower(watch(replica.stub, after_cursor="0")).start()
    replayed = follower.wait_changes(4)
    assert positions(replayed) == [1, 2, 3, 4]
    assert [(e.status.user_id, e.rpc, e.status.state) for e in replayed] == [
        ("ann", "ImportSession", pb.SESSION_STATE_ACTIVE),
        ("bob", "ImportSession", pb.SESSION_STATE_ACTIVE),
        ("cat", "ImportSession", pb.SESSION_STATE_ACTIVE),
        ("bob", "DeleteSession", pb.SESSION_STATE_NOT_CONNECTED),
    ]
    # Caught up: heartbeats carry the position read through.
    assert follower.wait_heartbeat().cursor == "4"
    connect(replica.stub, "dan")
    disconnect(replica.stub, "ann")
    followed = follower.wait_changes(6)[4:]
    assert [(int(e.cursor), e.status.user_id, e.rpc) for e in followed] == [
        (5, "dan", "ImportSession"),
        (6, "ann", "DeleteSession"),
    ]
    follower.cancel()
    # Each change is one audit event of the same transaction: the same RPCs, in order.
    recorded = [
        (e.user_id, e.rpc) for e in audit_events(replica.running.application.settings.database_url)
    ]
    assert recorded == [(e.status.user_id, e.rpc) for e in follower.changes]


def test_empty_cursor_starts_with_new_changes_and_a_heartbeat(start_replica: StartReplica) -> None:
    replica = start_replica()
    connect(replica.stub, "old")
    follower = Follower(watch(replica.stub)).start()
    # The first message says where the stream stands, before anything happens.
    assert follower.heartbeats == []
    assert follower.wait_heartbeat().cursor == "1"
    connect(replica.stub, "new")
    [change] = follower.wait_changes(1)
    assert (change.cursor, change.status.user_id) == ("2", "new")
    follower.cancel()


def test_resuming_from_a_cursor_sends_nothing_twice(start_replica: StartReplica) -> None:
    replica = start_replica()
    for user in ("u1", "u2", "u3", "u4"):
        connect(replica.stub, user)
    first = Follower(watch(replica.stub, after_cursor="0")).start()
    last_read = first.wait_changes(2)[1].cursor
    first.cancel()
    second = Follower(watch(replica.stub, after_cursor=last_read)).start()
    assert positions(second.wait_changes(2)) == [3, 4]
    second.cancel()


def test_events_never_carry_a_lease_id_or_a_secret(start_replica: StartReplica) -> None:
    replica = start_replica()
    connect(replica.stub, "leased")
    follower = Follower(watch(replica.stub, after_cursor="0", user_id="leased")).start()
    grant = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="leased", holder="w1"), role="worker"
    )
    events = follower.wait_changes(2)
    follower.cancel()
    lease_event = events[1]
    assert lease_event.rpc == "LeaseSession"
    assert lease_event.status.lease.holder == "w1"
    assert lease_event.status.lease.fencing_token == grant.lease.fencing_token
    assert lease_event.status.lease.lease_id == ""
    raw = b"".join(event.SerializeToString() for event in events)
    for secret in (grant.lease.lease_id, "access-leased", "refresh-leased", "secret-leased"):
        assert secret.encode() not in raw


def test_filters_by_state_and_user(start_replica: StartReplica) -> None:
    replica = start_replica()
    by_state = Follower(
        watch(replica.stub, after_cursor="0", states=[pb.SESSION_STATE_NOT_CONNECTED])
    ).start()
    by_user = Follower(watch(replica.stub, after_cursor="0", user_id="bob")).start()
    for user in ("ann", "bob"):
        connect(replica.stub, user)
    disconnect(replica.stub, "ann")
    disconnect(replica.stub, "bob")
    assert [(e.cursor, e.status.user_id) for e in by_state.wait_changes(2)] == [
        ("3", "ann"),
        ("4", "bob"),
    ]
    assert [(e.cursor, e.rpc) for e in by_user.wait_changes(2)] == [
        ("2", "ImportSession"),
        ("4", "DeleteSession"),
    ]
    # A filtered stream's heartbeats move its cursor past what it skipped.
    connect(replica.stub, "cat")
    wait_until(lambda: by_user.wait_heartbeat().cursor == "5", 15, "heartbeat past 5")
    by_state.cancel()
    by_user.cancel()


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"after_cursor": "abc"}, "after_cursor"),
        ({"after_cursor": "1" * 25}, "after_cursor"),
        # 19 digits, but past a 64-bit position: INTERNAL before.
        ({"after_cursor": "9223372036854775808"}, "after_cursor"),
        ({"after_cursor": "9" * 19}, "after_cursor"),
        ({"user_id": "no spaces"}, "user_id"),
        ({"states": [42]}, "states"),
    ],
)
def test_bad_requests_are_invalid_argument(
    start_replica: StartReplica, request_fields: dict[str, Any], field: str
) -> None:
    replica = start_replica()
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(watch(replica.stub, **request_fields)))
    failure = failure_of(raised.value)
    assert (failure.code, failure.reason, failure.field_violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        [field],
    )


def test_watchers_beyond_the_limit_are_refused(start_replica: StartReplica) -> None:
    replica = start_replica(stream=replace(FAST_STREAM, max_watchers=2))
    followers = [Follower(watch(replica.stub)).start() for _ in range(2)]
    for follower in followers:
        follower.wait_heartbeat()
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(watch(replica.stub)))
    failure = failure_of(raised.value)
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_WATCHERS",
    )
    assert failure.retry_seconds == 5
    # A slot frees when a watcher leaves.
    followers[0].cancel()
    events = replica.running.application.use_cases.session_events
    wait_until(lambda: events.watchers == 1, 10, "the cancelled stream to end")
    Follower(watch(replica.stub)).start().wait_heartbeat()
    followers[1].cancel()


def test_stopping_the_replica_ends_streams_at_once(start_replica: StartReplica) -> None:
    replica = start_replica(grace_period_seconds=30)
    follower = Follower(watch(replica.stub)).start()
    follower.wait_heartbeat()
    stopper = threading.Thread(target=replica.running.stop)
    stopper.start()
    ended = follower.wait_end(timeout=10)
    stopper.join(timeout=10)
    assert not stopper.is_alive()  # the grace period did not wait for the stream
    assert ended is not None
    failure = failure_of(ended)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "REPLICA_STOPPING")


def test_cursor_format_is_the_position() -> None:
    assert format_cursor(42) == "42"


def test_a_cursor_ahead_of_the_log_is_refused(start_replica: StartReplica) -> None:
    """A cursor this log never issued (a database restored from a backup older than the
    consumer's cursor). Before: accepted, and every change up to it was skipped for ever."""
    replica = start_replica()
    connect(replica.stub, "ann")
    for cursor in ("2", "9223372036854775807"):
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(watch(replica.stub, after_cursor=cursor)))
        failure = failure_of(raised.value)
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "CURSOR_EXPIRED",
        )
        assert "ahead of the change log" in failure.message
    # The head itself is a cursor the log issued.
    follower = Follower(watch(replica.stub, after_cursor="1")).start()
    assert follower.wait_heartbeat().cursor == "1"
    follower.cancel()
