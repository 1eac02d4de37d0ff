"""ListAuditEvents' start_time lists "only events that occurred at or after it" and end_time
"only events that occurred before it" (proto comments), to the nanosecond. Stored times are
whole microseconds, so a bound inside a microsecond is rounded up. Before, the Timestamps were
cut down to microseconds (Timestamp.ToDatetime drops the nanoseconds): an event up to 999 ns
before start_time was listed, and one up to 999 ns before end_time was not."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2

from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.audit import Spec, insert_events
from tests.fixtures.servers import Replica, expect_failure

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _at(nanos: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(T0.timestamp()), nanos=nanos)


def test_an_event_before_start_time_is_not_listed(service: Replica, database_url: str) -> None:
    insert_events(database_url, [Spec(T0, "alice")])
    # The event occurred 500 ns before start_time.
    events = service.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(start_time=_at(500)), role="viewer"
    ).events
    assert [event.user_id for event in events] == []


def test_an_event_before_end_time_is_listed(service: Replica, database_url: str) -> None:
    insert_events(database_url, [Spec(T0, "alice")])
    # The event occurred 500 ns before end_time.
    events = service.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(end_time=_at(500)), role="viewer"
    ).events
    assert [event.user_id for event in events] == ["alice"]


def test_a_range_inside_one_microsecond_is_an_empty_answer(
    service: Replica, database_url: str
) -> None:
    """end_time after start_time, both inside one microsecond: a valid range that no stored
    time falls in. Before, both bounds rounded up to the same microsecond and the request was
    refused: INVALID_ARGUMENT "end_time must be after start_time"."""
    insert_events(database_url, [Spec(T0, "alice")])
    events = service.call(
        "ListAuditEvents",
        pb.ListAuditEventsRequest(start_time=_at(100), end_time=_at(900)),
        role="viewer",
    ).events
    assert list(events) == []


def test_an_end_time_equal_to_start_time_is_still_refused(service: Replica) -> None:
    refused = expect_failure(
        lambda: service.call(
            "ListAuditEvents",
            pb.ListAuditEventsRequest(start_time=_at(100), end_time=_at(100)),
            role="viewer",
        )
    )
    assert (refused.code, refused.field_violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["end_time"],
    )
