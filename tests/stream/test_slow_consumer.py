"""A consumer that stops reading is cut off with RESOURCE_EXHAUSTED CONSUMER_TOO_SLOW once an
event waited GARMIN_AUTH_STREAM_SEND_TIMEOUT to be sent; its server thread and watcher slot
come back. Nothing is buffered without bound: gRPC's flow control holds the sender."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from auth_service.domain.models import SessionState, SessionStatusView
from auth_service.storage.change_log import encode_status
from auth_service.storage.models import GarminChangeCounter, GarminSessionChange
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.reliability import wait_until
from tests.stream import bearer
from tests.stream.conftest import FAST_STREAM, StartReplica

# About 8 MB of events: far more than HTTP/2's windows hold for a consumer that reads nothing.
EVENTS = 2000
REASON = "x" * 4000


def _fill_log(database_url: str) -> None:
    status = encode_status(
        SessionStatusView(user_id="big", state=SessionState.AUTH_EXPIRED, invalidated_reason=REASON)
    )
    now = datetime.now(UTC)
    engine = create_engine(database_url, poolclass=NullPool)
    with Session(engine) as session, session.begin():
        session.add_all(
            GarminSessionChange(
                position=position,
                occurred_at=now,
                user_id="big",
                rpc="ReportInvalidated",
                state=SessionState.AUTH_EXPIRED.value,
                status=status,
            )
            for position in range(1, EVENTS + 1)
        )
        session.execute(update(GarminChangeCounter).values(last_position=EVENTS))
    engine.dispose()


def test_a_consumer_that_stops_reading_is_cut_off(
    start_replica: StartReplica, database_url: str
) -> None:
    _fill_log(database_url)
    replica = start_replica(stream=replace(FAST_STREAM, send_timeout_seconds=1.0))
    events = replica.running.application.use_cases.session_events
    # No BDP probing: the connection's window stays at HTTP/2's default.
    channel = grpc.insecure_channel(replica.target, options=[("grpc.http2.bdp_probe", 0)])
    stub = pb_grpc.GarminAuthServiceStub(channel)
    call = stub.WatchSessionEvents(
        pb.WatchSessionEventsRequest(after_cursor="0"), metadata=bearer("viewer")
    )
    first = next(call)
    assert first.cursor == "1"
    wait_until(lambda: events.watchers == 1, 10, "the stream to hold its slot")
    started = time.monotonic()
    # Read nothing more: the server's sends stall, and the guard cuts the stream off.
    wait_until(lambda: events.watchers == 0, 30, "the stalled stream to be cut off")
    assert time.monotonic() - started < 20
    received = [first]
    with pytest.raises(grpc.RpcError) as ended:
        received.extend(call)
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (ended.value.details() or "").startswith("CONSUMER_TOO_SLOW: ")
    # What the consumer still got was what the windows held, far from all of it.
    assert len(received) < EVENTS
    channel.close()
