"""WatchSessionEvents' conversions: the request into a filter, log entries into events."""

from __future__ import annotations

from datetime import UTC, datetime

from auth_service.api import convert
from auth_service.domain.changes import ChangeFilter, Heartbeat, SessionChange, format_cursor
from auth_service.domain.models import SessionState
from auth_service.domain.validation import raise_if_any
from garmin_auth.v1 import garmin_auth_pb2 as pb


def change_filter(request: pb.WatchSessionEventsRequest, scope: str | None) -> ChangeFilter:
    states: set[SessionState] = set()
    for value in request.states:
        state, unknown = convert.state_filter(value, "states")
        raise_if_any(unknown)
        if state is not None:
            states.add(state)
    return ChangeFilter(
        states=frozenset(states), user_id=request.user_id or None, user_id_prefix=scope
    )


def event_to_proto(item: SessionChange | Heartbeat) -> pb.SessionEvent:
    if isinstance(item, Heartbeat):
        return pb.SessionEvent(cursor=format_cursor(item.position), occurred_at=datetime.now(UTC))
    return pb.SessionEvent(
        cursor=format_cursor(item.position),
        status=convert.status_to_proto(item.status),
        rpc=item.rpc,
        occurred_at=convert.to_timestamp(item.occurred_at),
    )
