"""GARMIN_AUTH_MAX_WATCHERS=0 turns the change stream off: a watch is refused for good
(UNIMPLEMENTED STREAM_DISABLED, no RetryInfo), not as a full replica to retry in 5 s."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from tests.fixtures.servers import failure_of
from tests.stream import watch
from tests.stream.conftest import FAST_STREAM, StartReplica


def test_a_replica_with_the_stream_off_refuses_watches_for_good(
    start_replica: StartReplica,
) -> None:
    replica = start_replica(stream=replace(FAST_STREAM, max_watchers=0))
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(watch(replica.stub)))
    failure = failure_of(raised.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNIMPLEMENTED, "STREAM_DISABLED")
    # Nothing to wait for: a retry hint would have every consumer call again every 5 s.
    assert failure.retry_seconds is None
    assert "GARMIN_AUTH_MAX_WATCHERS" in failure.message
