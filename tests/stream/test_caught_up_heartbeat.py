"""The first heartbeat comes as soon as a watch has caught up with the log: at once from an
empty cursor (tests/stream: test_empty_cursor_starts_with_new_changes_and_a_heartbeat), and
right after the replay from an older cursor, naming the last change replayed. Before, a replay
put the first heartbeat off by a whole heartbeat interval of silence (15 s by default), though
the README said heartbeats are sent first: a consumer catching up learned late that it had."""

from __future__ import annotations

import time
from dataclasses import replace

from tests.stream import connect, watch
from tests.stream.conftest import FAST_STREAM, StartReplica

HEARTBEAT_SECONDS = 5.0  # like the 15 s default: long next to the replay itself


def test_a_replay_ends_with_a_heartbeat_at_once(start_replica: StartReplica) -> None:
    replica = start_replica(stream=replace(FAST_STREAM, heartbeat_seconds=HEARTBEAT_SECONDS))
    for user in ("ann", "bob", "cat"):
        connect(replica.stub, user)
    started = time.monotonic()
    call = watch(replica.stub, after_cursor="0")
    replayed = []
    try:
        for event in call:
            if not event.HasField("status"):
                heartbeat = event
                break
            replayed.append(event)
    finally:
        call.cancel()
    waited = time.monotonic() - started
    assert {event.status.user_id for event in replayed} == {"ann", "bob", "cat"}
    assert heartbeat.cursor == replayed[-1].cursor
    assert waited < HEARTBEAT_SECONDS / 2, f"the first heartbeat came after {waited:.1f} s"
