"""ListAuditEvents: the audit trail, a page at a time (what is written, and when, is in
auth_service.domain.audit)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from auth_service.domain import validation
from auth_service.domain.audit import AuditEventView, AuditFilter, AuditPage
from auth_service.domain.errors import FieldViolation
from auth_service.domain.paging import Pager, check_page_size
from auth_service.services.unit_of_work import UnitsOfWork


class AuditLog:
    """ListAuditEvents."""

    def __init__(self, uow: UnitsOfWork, pager: Pager) -> None:
        self._uow = uow
        self._pager = pager

    def list_events(self, query: AuditFilter, *, page_size: int, page_token: str) -> AuditPage:
        violations: list[FieldViolation] = []
        if query.user_id is not None:
            violations += validation.check_user_id(query.user_id)
        violations += check_page_size(page_size)
        # Equal bounds may come from two instants inside one microsecond (api.convert
        # .time_range checks the order as sent): an empty range, not a wrong one.
        if query.start_time and query.end_time and query.end_time < query.start_time:
            violations.append(FieldViolation("end_time", "must be after start_time"))
        validation.raise_if_any(violations)
        fingerprint = query.fingerprint()
        request = self._pager.request(page_size, page_token, fingerprint, _after_event)
        with self._uow() as uow:
            events = uow.audit_events.list_page(
                user_id=query.user_id,
                start_time=query.start_time,
                end_time=query.end_time,
                after=request.after,
                oldest_first=query.oldest_first,
                limit=request.fetch,
                user_id_prefix=query.user_id_prefix,
            )
        shown, next_token = self._pager.page(events, request, fingerprint, _position)
        return AuditPage(events=shown, next_page_token=next_token)


def _after_event(position: dict[str, Any]) -> tuple[datetime, int]:
    at, event_id = position["at"], position["id"]
    if not isinstance(at, str) or not isinstance(event_id, int):
        raise TypeError("the position is not an event's")
    return datetime.fromisoformat(at).astimezone(UTC), event_id


def _position(event: AuditEventView) -> dict[str, Any]:
    return {"at": event.occurred_at.isoformat(), "id": event.event_id}
