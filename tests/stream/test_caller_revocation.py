"""An open WatchSessionEvents stream answers to the callers file as it stands, not as it stood
when the stream opened.

README ("Callers"): the file "is re-read when it changes, so removing an entry revokes a
token without a restart", and an edit that cannot be parsed refuses every caller. Before each
event and heartbeat a stream whose file changed authenticates its caller again and ends as a
new call would be answered; a caller whose entry changed (roles, user_id_prefix) is ended too,
since its filter and scope were the old entry's. Before, a stream was authenticated once, when
it opened: a revoked viewer went on receiving every user's changes until its connection was
recycled (GARMIN_AUTH_MAX_CONNECTION_AGE plus its grace, about 7 minutes by default).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from auth_service.api.callers import token_sha256
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import ROLE_TOKENS, Replica, failure_of, write_callers_file
from tests.stream import Follower, connect, watch
from tests.stream.conftest import StartReplica

pytestmark = pytest.mark.timeout(90)

SCOPED_TOKEN = "scoped-viewer-token-0123456789abcdef"


def _scoped_viewer(prefix: str, roles: str = '["viewer"]') -> str:
    return (
        f'\n[[callers]]\nname = "tenant-viewer"\ntoken_sha256 = "{token_sha256(SCOPED_TOKEN)}"\n'
        f'roles = {roles}\nuser_id_prefix = "{prefix}"\n'
    )


def _rewrite(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    _touch_later(path)


def _touch_later(path: Path) -> None:
    """A later mtime: the next reload check sees the edit, however fast it came."""
    future = time.time() + 5
    os.utime(path, (future, future))


def _wait_until_refused(replica: Replica, role: str) -> None:
    """Until a unary call of `role` is refused: the replica has reloaded the file."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            replica.call("GetStatus", pb.GetStatusRequest(user_id="u"), role=role)
        except grpc.RpcError:
            return
        time.sleep(0.2)
    raise AssertionError(f"{role} was never refused")


def _until_end(follower: Follower, seconds: float = 15) -> tuple[list[str], grpc.RpcError | None]:
    """The users of the changes the stream still delivers, and how it ends (within
    `seconds`: the file is looked at every 2 s, heartbeats come every half second)."""
    users: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        item = follower.items.get(timeout=seconds)
        if isinstance(item, grpc.RpcError) or item is None:
            return users, item
        if item.HasField("status"):
            users.append(item.status.user_id)
    follower.cancel()
    raise AssertionError(f"the stream is still open {seconds:g} s on; changes sent: {users}")


def _ended_as(follower: Follower) -> tuple[grpc.StatusCode, str]:
    _users, end = _until_end(follower)
    assert end is not None, "the stream ended OK"
    failure = failure_of(end)
    return failure.code, failure.reason


def test_a_revoked_viewer_stops_receiving_changes(start_replica: StartReplica) -> None:
    replica = start_replica()
    callers = replica.running.application.settings.callers_file
    assert callers is not None
    follower = Follower(watch(replica.stub, "viewer", after_cursor="0")).start()
    connect(replica.stub, "before-revoke")
    follower.wait_changes(1)

    _touch_later(write_callers_file(callers, {"admin": ROLE_TOKENS["admin"]}))
    _wait_until_refused(replica, "viewer")
    connect(replica.stub, "after-revoke")

    users, end = _until_end(follower)
    assert "after-revoke" not in users
    assert end is not None
    failure = failure_of(end)
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLER_UNAUTHENTICATED",
    )


def test_a_botched_callers_file_ends_every_stream(start_replica: StartReplica) -> None:
    replica = start_replica()
    callers = replica.running.application.settings.callers_file
    assert callers is not None
    follower = Follower(watch(replica.stub, "admin")).start()
    follower.wait_heartbeat()
    _rewrite(callers, "[[callers]\nname = ")
    assert _ended_as(follower) == (grpc.StatusCode.UNAUTHENTICATED, "CALLERS_FILE_INVALID")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        # Another scope: the stream's filter was the old one's.
        (
            _scoped_viewer("tenant-b:"),
            (grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED"),
        ),
        # A role that may not watch: refused as a new call would be.
        (
            _scoped_viewer("tenant-a:", '["worker"]'),
            (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN"),
        ),
    ],
    ids=["new-prefix", "new-roles"],
)
def test_a_changed_entry_ends_its_stream(
    start_replica: StartReplica,
    tmp_path: Path,
    entry: str,
    expected: tuple[grpc.StatusCode, str],
) -> None:
    callers = write_callers_file(tmp_path / "callers-scoped.toml")
    base = callers.read_text()
    callers.write_text(base + _scoped_viewer("tenant-a:"), encoding="utf-8")
    replica = start_replica(callers_file=callers)
    scoped = (("authorization", f"Bearer {SCOPED_TOKEN}"),)
    follower = Follower(
        replica.stub.WatchSessionEvents(pb.WatchSessionEventsRequest(), metadata=scoped)
    ).start()
    follower.wait_heartbeat()
    _rewrite(callers, base + entry)
    assert _ended_as(follower) == expected


def test_an_edit_about_other_callers_leaves_the_stream_open(start_replica: StartReplica) -> None:
    replica = start_replica()
    callers = replica.running.application.settings.callers_file
    assert callers is not None
    follower = Follower(watch(replica.stub, "viewer")).start()
    follower.wait_heartbeat()
    kept = {role: ROLE_TOKENS[role] for role in ("admin", "viewer")}
    _touch_later(write_callers_file(callers, kept))
    _wait_until_refused(replica, "worker")
    connect(replica.stub, "after-edit")
    assert [event.status.user_id for event in follower.wait_changes(1)] == ["after-edit"]
    follower.cancel()
