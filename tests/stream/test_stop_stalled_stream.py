"""A stop ends every watch at once with UNAVAILABLE REPLICA_STOPPING (README, "Change stream
and webhooks": "On SIGTERM streams end at once"), a stream whose consumer reads slowly too.

Before: such a stream's thread was parked in gRPC's send (its windows full while the
consumer replayed a backlog), where the watch never looked at `stopping`: the stop waited
out its whole grace period, and the consumer read UNAVAILABLE "Cancelling all calls" with
no reason. Now the send guard cuts it off with REPLICA_STOPPING at the stop's start, and
every guarded stream ends before its next message. (From a read-only review of the
change stream.)"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import grpc

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.reliability import wait_until
from tests.stream import bearer
from tests.stream.conftest import FAST_STREAM, StartReplica
from tests.stream.test_slow_consumer import _fill_log


def test_a_stop_ends_a_stream_whose_consumer_reads_slowly_at_once(
    start_replica: StartReplica, database_url: str
) -> None:
    _fill_log(database_url)
    # The guard would cut the stream after 60 s: well past the stop's 8 s grace.
    replica = start_replica(
        stream=replace(FAST_STREAM, send_timeout_seconds=60.0), grace_period_seconds=8
    )
    events = replica.running.application.use_cases.session_events
    channel = grpc.insecure_channel(replica.target, options=[("grpc.http2.bdp_probe", 0)])
    stub = pb_grpc.GarminAuthServiceStub(channel)
    call = stub.WatchSessionEvents(
        pb.WatchSessionEventsRequest(after_cursor="0"), metadata=bearer("viewer")
    )
    assert next(call).cursor == "1"
    wait_until(lambda: events.watchers == 1, 10, "the stream to hold its slot")
    time.sleep(1.0)  # the consumer is busy with its first event: the windows fill
    started = time.monotonic()
    stopper = threading.Thread(target=replica.running.stop)
    stopper.start()
    stopper.join(timeout=30)
    took = time.monotonic() - started
    code = None
    try:
        for _ in call:
            pass
    except grpc.RpcError as error:
        code = (error.code(), error.details())
    channel.close()
    assert took < 4, f"the stop waited {took:.1f}s for the stream (its grace period)"
    assert code is not None
    assert code[0] == grpc.StatusCode.UNAVAILABLE
    assert (code[1] or "").startswith("REPLICA_STOPPING: "), code
