"""ListAuditEvents over real gRPC: order, keyset pagination, filters, validation and roles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.audit import Spec, insert_events
from tests.fixtures.servers import Replica, expect_failure, failure_of

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def _page_through(
    service: Replica, page_size: int, **filters: str | bool | timestamp_pb2.Timestamp
) -> tuple[list[pb.AuditEvent], int]:
    """Every event matching `filters`, page by page; also how many pages it took."""
    query = pb.ListAuditEventsRequest(page_size=page_size)
    for name, value in filters.items():
        if isinstance(value, timestamp_pb2.Timestamp):
            getattr(query, name).CopyFrom(value)
        else:
            setattr(query, name, value)
    events: list[pb.AuditEvent] = []
    pages = 0
    while True:
        page = service.call("ListAuditEvents", query, role="viewer")
        events.extend(page.events)
        pages += 1
        assert pages <= 200
        if not page.next_page_token:
            return events, pages
        query.page_token = page.next_page_token


@pytest.fixture
def seeded(database_url: str) -> list[Spec]:
    """Seven events of two users; two pairs share a timestamp (the id breaks the tie)."""
    specs = [
        Spec(T0, "alice"),
        Spec(T0 + timedelta(minutes=1), "bob"),
        Spec(T0 + timedelta(minutes=1), "alice"),
        Spec(T0 + timedelta(minutes=2), "alice", rpc="ReleaseLease"),
        Spec(T0 + timedelta(minutes=3), "bob"),
        Spec(T0 + timedelta(minutes=3), "bob", rpc="RenewLease"),
        Spec(T0 + timedelta(minutes=4), None, rpc="ReportInvalidated"),
    ]
    insert_events(database_url, specs)
    return specs


def _keys(events: list[pb.AuditEvent]) -> list[tuple[datetime, int]]:
    return [(event.occurred_at.ToDatetime(tzinfo=UTC), event.event_id) for event in events]


def test_newest_first_by_default_and_every_field_is_answered(
    service: Replica, seeded: list[Spec]
) -> None:
    events, pages = _page_through(service, 2)
    assert pages == 4
    assert len(events) == len(seeded)
    keys = _keys(events)
    assert keys == sorted(keys, reverse=True)
    assert len({event.event_id for event in events}) == len(seeded)
    newest = events[0]
    assert newest.occurred_at.ToDatetime(tzinfo=UTC) == T0 + timedelta(minutes=4)
    assert (newest.rpc, newest.user_id, newest.caller) == ("ReportInvalidated", "", "worker-caller")
    assert (newest.outcome_code, newest.outcome_reason) == ("OK", "OK")
    assert (newest.lease_id, newest.lease_ref, newest.fencing_token) == ("", "", 0)


def test_oldest_first(service: Replica, seeded: list[Spec]) -> None:
    events, _ = _page_through(service, 3, oldest_first=True)
    keys = _keys(events)
    assert keys == sorted(keys)
    assert len(keys) == len(seeded)
    assert events[0].user_id == "alice"


def test_filter_by_user_and_time_range(service: Replica, seeded: list[Spec]) -> None:
    alice, _ = _page_through(service, 1, user_id="alice")
    assert [event.user_id for event in alice] == ["alice"] * 3
    assert alice[0].rpc == "ReleaseLease"

    # [start, end): the start is included, the end is not.
    window, _ = _page_through(
        service,
        2,
        start_time=_ts(T0 + timedelta(minutes=1)),
        end_time=_ts(T0 + timedelta(minutes=3)),
    )
    assert sorted(_keys(window))[0][0] == T0 + timedelta(minutes=1)
    assert {key[0] for key in _keys(window)} == {
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=2),
    }
    assert len(window) == 3

    bob_late, _ = _page_through(
        service, 10, user_id="bob", start_time=_ts(T0 + timedelta(minutes=2))
    )
    assert {event.rpc for event in bob_late} == {"LeaseSession", "RenewLease"}
    assert _page_through(service, 10, user_id="carol")[0] == []


def test_default_page_size_is_100(service: Replica, database_url: str) -> None:
    insert_events(database_url, [Spec(T0 + timedelta(seconds=i)) for i in range(150)])
    first = service.call("ListAuditEvents", pb.ListAuditEventsRequest(), role="viewer")
    assert len(first.events) == 100
    assert first.next_page_token
    second = service.call(
        "ListAuditEvents",
        pb.ListAuditEventsRequest(page_token=first.next_page_token),
        role="viewer",
    )
    assert len(second.events) == 50
    assert second.next_page_token == ""
    assert not {e.event_id for e in first.events} & {e.event_id for e in second.events}


def test_page_token_is_tied_to_the_filter_and_order(service: Replica, seeded: list[Spec]) -> None:
    first = service.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(user_id="bob", page_size=1), role="viewer"
    )
    token = first.next_page_token
    assert token
    for other in (
        pb.ListAuditEventsRequest(user_id="alice", page_token=token),
        pb.ListAuditEventsRequest(page_token=token),
        pb.ListAuditEventsRequest(user_id="bob", page_token=token, oldest_first=True),
        pb.ListAuditEventsRequest(user_id="bob", page_token=token, start_time=_ts(T0)),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            service.call("ListAuditEvents", other)
        failure = failure_of(raised.value)
        assert (failure.code, failure.field_violations) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            ["page_token"],
        )
    # With its own filter it still works.
    again = service.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(user_id="bob", page_token=token)
    )
    assert [event.user_id for event in again.events] == ["bob", "bob"]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.ListAuditEventsRequest(page_size=1001), ["page_size"]),
        (pb.ListAuditEventsRequest(page_size=-1), ["page_size"]),
        (pb.ListAuditEventsRequest(user_id="not a user id"), ["user_id"]),
        (pb.ListAuditEventsRequest(page_token="not-a-token"), ["page_token"]),
        (pb.ListAuditEventsRequest(page_token="eyJhdCI6IDF9"), ["page_token"]),
        (
            pb.ListAuditEventsRequest(start_time=_ts(T0), end_time=_ts(T0)),
            ["end_time"],
        ),
        (
            pb.ListAuditEventsRequest(start_time=timestamp_pb2.Timestamp(seconds=-(10**12))),
            ["start_time"],
        ),
    ],
    ids=[
        "too-big",
        "negative",
        "user-id",
        "garbage-token",
        "token-without-id",
        "empty-range",
        "bad-time",
    ],
)
@pytest.mark.parametrize("backend", ["sqlite"])
def test_bad_requests_are_invalid_argument(
    service: Replica, request_: pb.ListAuditEventsRequest, fields: list[str]
) -> None:
    failure = expect_failure(lambda: service.call("ListAuditEvents", request_))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.field_violations == fields


@pytest.mark.parametrize("backend", ["sqlite"])
def test_roles_admin_and_viewer_may_list_worker_may_not(
    service: Replica, database_url: str
) -> None:
    insert_events(database_url, [Spec(T0)])
    for role in ("admin", "viewer"):
        assert (
            len(service.call("ListAuditEvents", pb.ListAuditEventsRequest(), role=role).events) == 1
        )
    failure = expect_failure(
        lambda: service.call("ListAuditEvents", pb.ListAuditEventsRequest(), role="worker")
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
    failure = expect_failure(
        lambda: service.call("ListAuditEvents", pb.ListAuditEventsRequest(), role=None)
    )
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
