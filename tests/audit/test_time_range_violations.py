"""ListAuditEvents answers INVALID_ARGUMENT with "BadRequest with one violation per field" (README,
Errors): every malformed field of the request is named, as each RPC's use case collects them
(validation.raise_if_any). Found by review: after b48e72e the order of start_time/end_time was
checked in the servicer (api.convert.time_range), before the use case: an inverted range is
answered alone, and the request's other violations (page_size, user_id) are dropped. Before,
AuditLog.list_events named them all in one answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import Replica, expect_failure

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(value.timestamp()))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_inverted_range_is_named_with_the_other_bad_fields(service: Replica) -> None:
    request = pb.ListAuditEventsRequest(
        page_size=1001, start_time=_ts(T0 + timedelta(hours=1)), end_time=_ts(T0)
    )
    failure = expect_failure(lambda: service.call("ListAuditEvents", request, role="viewer"))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(failure.field_violations) == ["end_time", "page_size"], (
        f"violations {failure.field_violations}: page_size=1001 is not named"
    )
