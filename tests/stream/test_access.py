"""Who may watch (admin, viewer), what a scoped caller sees, and pruned cursors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from auth_service.api.callers import ROLES, RPC_ROLES, token_sha256
from auth_service.domain.changes import ChangeFilter, Heartbeat, SessionChange
from auth_service.domain.errors import CursorExpired
from auth_service.storage.audit_pruning import prune_audit
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import failure_of, write_callers_file
from tests.reliability import SkewedClock
from tests.stream import Follower, connect, watch
from tests.stream.conftest import StartReplica

SCOPED_TOKEN = "scoped-viewer-token-0123456789abcdef"


@pytest.mark.parametrize("role", [*sorted(ROLES), None])
def test_authorization_matrix(start_replica: StartReplica, role: str | None) -> None:
    """admin and viewer watch; worker and worker_full are forbidden; no token is
    unauthenticated. Each refusal comes before anything is sent."""
    replica = start_replica()
    connect(replica.stub, "victim")
    call = watch(replica.stub, role=role, after_cursor="0")
    if role is not None and role in RPC_ROLES["WatchSessionEvents"]:
        first = next(call)
        assert first.status.user_id == "victim"
        call.cancel()
        return
    with pytest.raises(grpc.RpcError) as raised:
        next(call)
    failure = failure_of(raised.value)
    expected = (
        (grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED")
        if role is None
        else (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
    )
    assert (failure.code, failure.reason) == expected


def test_the_roles_of_the_stream() -> None:
    assert RPC_ROLES["WatchSessionEvents"] == frozenset({"admin", "viewer"})


def test_a_scoped_caller_sees_only_its_users(start_replica: StartReplica, tmp_path: Path) -> None:
    callers = write_callers_file(tmp_path / "callers-scoped.toml")
    callers.write_text(
        callers.read_text() + '\n[[callers]]\nname = "tenant-a-viewer"\n'
        f'token_sha256 = "{token_sha256(SCOPED_TOKEN)}"\n'
        'roles = ["viewer"]\nuser_id_prefix = "tenant-a:"\n',
        encoding="utf-8",
    )
    replica = start_replica(callers_file=callers)
    for user in ("tenant-a:ann", "tenant-b:bob", "tenant-a:cat"):
        connect(replica.stub, user)
    scoped = (("authorization", f"Bearer {SCOPED_TOKEN}"),)
    follower = Follower(
        replica.stub.WatchSessionEvents(
            pb.WatchSessionEventsRequest(after_cursor="0"), metadata=scoped
        )
    ).start()
    assert [e.status.user_id for e in follower.wait_changes(2)] == ["tenant-a:ann", "tenant-a:cat"]
    assert follower.wait_heartbeat().cursor == "3"
    follower.cancel()
    with pytest.raises(grpc.RpcError) as raised:
        next(
            replica.stub.WatchSessionEvents(
                pb.WatchSessionEventsRequest(user_id="tenant-b:bob"), metadata=scoped
            )
        )
    assert failure_of(raised.value).reason == "CALLER_FORBIDDEN"


def test_a_pruned_cursor_is_refused(start_replica: StartReplica, database_url: str) -> None:
    replica = start_replica()
    for user in ("a", "b", "c"):
        connect(replica.stub, user)
    engine = create_engine(database_url, poolclass=NullPool)
    # Everything up to now is older than a retention of zero.
    prune_audit(engine, timedelta(0))
    engine.dispose()
    connect(replica.stub, "d")
    with pytest.raises(grpc.RpcError) as raised:
        next(watch(replica.stub, after_cursor="1"))
    failure = failure_of(raised.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CURSOR_EXPIRED")
    # The cursor of the last pruned change still resumes: nothing after it is gone.
    follower = Follower(watch(replica.stub, after_cursor="3")).start()
    assert [(e.cursor, e.status.user_id) for e in follower.wait_changes(1)] == [("4", "d")]
    follower.cancel()


def test_pruning_under_a_live_watch_ends_it_with_cursor_expired(
    start_replica: StartReplica, database_url: str
) -> None:
    """A watch that has not reached the changes prune-audit deletes must not jump over them.
    Before: only the watch's start was checked; it went on after the gap as if nothing were
    missing (here: user d's change, pruned before the watch read it)."""
    replica = start_replica()
    for user in ("a", "b", "c"):
        connect(replica.stub, user)
    events = replica.running.application.use_cases.session_events
    watching = iter(events.watch("0", ChangeFilter()))
    first = next(watching)
    assert isinstance(first, SessionChange)
    assert first.position == 1
    connect(replica.stub, "d")  # position 4, not read yet
    engine = create_engine(database_url, poolclass=NullPool)
    prune_audit(engine, timedelta(0))  # 1-4 are older than a retention of zero
    engine.dispose()
    # 2 and 3 were read before the prune and are still delivered, with the heartbeat of a
    # watch that caught up with the log as it read it; then the gap is seen.
    assert [change.position for change in (next(watching), next(watching))] == [2, 3]
    caught_up = next(watching)
    assert isinstance(caught_up, Heartbeat)
    assert caught_up.position == 3
    with pytest.raises(CursorExpired, match="pruned"):
        next(watching)


def test_pruning_keeps_the_log_a_suffix_when_clocks_disagree(
    start_replica: StartReplica, database_url: str
) -> None:
    """occurred_at is a transaction's start on its replica's clock, the position comes after
    its commit: a replica whose clock runs an hour behind commits position 2 dated before
    position 1. Before: a 30-minute retention pruned 2 and kept 1, a gap first_kept() did
    not see, so a watch from cursor 1 skipped user b's change without a word."""
    ahead = start_replica()
    behind = start_replica(clock=SkewedClock(timedelta(hours=-1)))
    connect(ahead.stub, "a")
    connect(behind.stub, "b")
    engine = create_engine(database_url, poolclass=NullPool)
    prune_audit(engine, timedelta(minutes=30))
    engine.dispose()
    follower = Follower(watch(ahead.stub, after_cursor="1")).start()
    assert [(e.cursor, e.status.user_id) for e in follower.wait_changes(1)] == [("2", "b")]
    follower.cancel()
