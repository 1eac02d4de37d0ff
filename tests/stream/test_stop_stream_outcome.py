"""A watch cut off by the stop (its consumer reading slowly) ends, for the consumer, with
UNAVAILABLE REPLICA_STOPPING, and its access line and grpc_server_handled_total say so.
Before: CANCELLED / Canceled, as if the consumer had gone away (review of b679eb9)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import grpc
import pytest
from prometheus_client import CollectorRegistry

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.reliability import wait_until
from tests.stream import bearer
from tests.stream.conftest import FAST_STREAM, StartReplica
from tests.stream.test_slow_consumer import _fill_log


def _handled(registry: CollectorRegistry, code: str) -> float:
    return (
        registry.get_sample_value(
            "grpc_server_handled_total",
            {
                "grpc_type": "server_stream",
                "grpc_service": "garmin_auth.v1.GarminAuthService",
                "grpc_method": "WatchSessionEvents",
                "grpc_code": code,
            },
        )
        or 0.0
    )


def test_a_stream_cut_off_by_the_stop_is_logged_and_counted_as_replica_stopping(
    start_replica: StartReplica, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="auth_service.rpc")
    _fill_log(database_url)
    replica = start_replica(
        stream=replace(FAST_STREAM, send_timeout_seconds=60.0), grace_period_seconds=8
    )
    events = replica.running.application.use_cases.session_events
    registry = replica.running.application.metrics.registry
    channel = grpc.insecure_channel(replica.target, options=[("grpc.http2.bdp_probe", 0)])
    stub = pb_grpc.GarminAuthServiceStub(channel)
    call = stub.WatchSessionEvents(
        pb.WatchSessionEventsRequest(after_cursor="0"), metadata=bearer("viewer")
    )
    assert next(call).cursor == "1"
    wait_until(lambda: events.watchers == 1, 10, "the stream to hold its slot")
    time.sleep(1.0)  # the windows fill
    stopper = threading.Thread(target=replica.running.stop)
    stopper.start()
    stopper.join(timeout=30)
    code = None
    try:
        for _ in call:
            pass
    except grpc.RpcError as error:
        code = error.code()
    channel.close()
    assert code == grpc.StatusCode.UNAVAILABLE  # what the consumer read
    lines = [
        record
        for record in caplog.records
        if record.name == "auth_service.rpc"
        and getattr(record, "rpc", None) == "WatchSessionEvents"
    ]
    assert lines, "no access line for the stopped watch"
    outcomes = [getattr(record, "outcome", None) for record in lines]
    counted = {c: _handled(registry, c) for c in ("Unavailable", "Canceled")}
    assert outcomes == ["REPLICA_STOPPING"], f"access outcome(s) {outcomes}"
    assert counted["Unavailable"] == 1, f"grpc_server_handled_total {counted}"
