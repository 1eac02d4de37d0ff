"""The audit trail: who changed whose session, through which RPC, and how it ended.

Writing. SessionService and LeaseService call `record` inside the very transaction that makes
the change, so an event exists if and only if its change was committed. The rule:

- Every committed change of an RPC writes one event: Login, SubmitMfa, ImportSession,
  DeleteSession (when the user had a row), LeaseSession and LeaseNextSession (per grant),
  RenewLease, ReleaseLease, ReportRefreshed, ReportInvalidated, and GetStatus with validate
  when Garmin's answer was stored. A lease grant whose token needed a central refresh writes a
  second event for the refresh's own change (tokens stored, session invalidated, or the
  unusable lease released).
- Refusals are recorded only where they carry security value and a transaction of the call is
  open anyway: LOGIN_RATE_LIMITED (the throttle's transaction), MFA_CODE_REJECTED (the wrong
  code is counted) and LEASE_LOST answers of ReportRefreshed and ReportInvalidated. No event
  ever gets a transaction of its own.
- Housekeeping that time causes (expired challenges dropped, abandoned MFA_PENDING settled),
  reads (GetStatus without validate, ListSessions, ListAuditEvents) and refusals decided
  before any change (validation, CALLER_*, LEASE_HELD, ...) write nothing; the interceptor logs
  every call.

Outcome: `outcome_code` is a gRPC status code name and `outcome_reason` the ErrorInfo reason
of the answer the change led to (the domain errors name both: errors.DomainError.code_name,
.reason). A success is "OK" with reason "OK", or one of MFA_REQUIRED, SESSION_REFRESHED,
SESSION_INVALIDATED when that says better what changed.

Never a secret: events hold names, ids, codes and times; no token, password, MFA code or
challenge id. A lease id is recorded only when the service granted it.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain import page_tokens, validation
from auth_service.domain.context import current_caller_name
from auth_service.domain.errors import DomainError, FieldViolation, LeaseLost
from auth_service.domain.models import LeaseView
from auth_service.domain.page_tokens import decode_page_token, encode_page_token
from auth_service.storage.audit_repository import AuditRepository, NewAuditEvent
from auth_service.storage.models import CALLER_LENGTH, GarminAuditEvent

SYSTEM_CALLER = "system"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Event ids are BIGINT: a page token naming a larger one cannot be ours.
MAX_EVENT_ID = 2**63 - 1


class AuditedRpc(enum.StrEnum):
    """The RPCs that write audit events (their names in garmin_auth.v1)."""

    LOGIN = "Login"
    SUBMIT_MFA = "SubmitMfa"
    GET_STATUS = "GetStatus"
    IMPORT_SESSION = "ImportSession"
    DELETE_SESSION = "DeleteSession"
    LEASE_SESSION = "LeaseSession"
    LEASE_NEXT_SESSION = "LeaseNextSession"
    RENEW_LEASE = "RenewLease"
    RELEASE_LEASE = "ReleaseLease"
    REPORT_REFRESHED = "ReportRefreshed"
    REPORT_INVALIDATED = "ReportInvalidated"


@dataclass(frozen=True)
class Outcome:
    """How a recorded change ended: a gRPC status code name and a reason."""

    code: str
    reason: str


OK = Outcome("OK", "OK")
# Login stored an MFA challenge and answered MFA_REQUIRED.
MFA_REQUIRED = Outcome("OK", "MFA_REQUIRED")
# The service refreshed the session with Garmin and stored the new tokens.
SESSION_REFRESHED = Outcome("OK", "SESSION_REFRESHED")
# GetStatus(validate): Garmin rejected the session, which is now AUTH_EXPIRED.
SESSION_INVALIDATED = Outcome("OK", "SESSION_INVALIDATED")
INTERNAL = Outcome("INTERNAL", "INTERNAL")
LEASE_LOST = Outcome(LeaseLost.code_name, LeaseLost.reason)


def outcome_of(error: BaseException) -> Outcome:
    """The answer `error` gives callers, as its class names it."""
    if isinstance(error, DomainError):
        return Outcome(error.code_name, error.reason)
    return INTERNAL


def caller_name() -> str:
    """The caller of the RPC being served; "system" outside an RPC."""
    name = current_caller_name.get()
    return name[:CALLER_LENGTH] if name else SYSTEM_CALLER


@dataclass(frozen=True)
class LeaseRef:
    """The lease an event concerns, when no LeaseView of it is at hand."""

    lease_id: str
    fencing_token: int | None


def record(
    session: Session,
    *,
    rpc: AuditedRpc,
    now: datetime,
    outcome: Outcome,
    user_id: str | None,
    lease: LeaseView | LeaseRef | None = None,
) -> None:
    """Write one event in `session`'s transaction (commits with the change, or not at all)."""
    AuditRepository(session).add(
        NewAuditEvent(
            occurred_at=now,
            caller=caller_name(),
            rpc=rpc.value,
            user_id=user_id,
            outcome_code=outcome.code,
            outcome_reason=outcome.reason,
            lease_id=lease.lease_id if lease else None,
            fencing_token=lease.fencing_token if lease else None,
        )
    )


def record_lease_lost(session: Session, *, rpc: AuditedRpc, now: datetime, lease_id: str) -> None:
    """A LEASE_LOST refusal, named by the lease's grant event when the lease was ours.

    A presented lease id that no kept event names is not recorded (it may not be ours at all,
    and nothing the caller sends is stored unless the service issued it).
    """
    owner = AuditRepository(session).lease_owner(lease_id)
    record(
        session,
        rpc=rpc,
        now=now,
        outcome=LEASE_LOST,
        user_id=owner.user_id if owner else None,
        lease=LeaseRef(lease_id, owner.fencing_token) if owner else None,
    )


# --- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEventView:
    """One audit event as callers see it."""

    event_id: int
    occurred_at: datetime
    caller: str
    rpc: str
    user_id: str | None
    outcome_code: str
    outcome_reason: str
    lease_id: str | None
    fencing_token: int | None


@dataclass(frozen=True)
class AuditPage:
    """One page of ListAuditEvents."""

    events: list[AuditEventView]
    next_page_token: str


@dataclass(frozen=True)
class AuditFilter:
    """What ListAuditEvents lists: a user (or everyone) within [start_time, end_time)."""

    user_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    oldest_first: bool = False

    def fingerprint(self) -> str:
        """A short digest that ties a page token to the filter it was issued for."""
        payload = json.dumps(
            [
                self.user_id,
                self.start_time.isoformat() if self.start_time else None,
                self.end_time.isoformat() if self.end_time else None,
                self.oldest_first,
            ]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class AuditService:
    """ListAuditEvents."""

    def __init__(self, db: sessionmaker[Session]) -> None:
        self._db = db

    def list_events(self, query: AuditFilter, *, page_size: int, page_token: str) -> AuditPage:
        violations: list[FieldViolation] = []
        if query.user_id is not None:
            violations += validation.check_user_id(query.user_id)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            violations.append(FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}"))
        if query.start_time and query.end_time and query.end_time <= query.start_time:
            violations.append(FieldViolation("end_time", "must be after start_time"))
        validation.raise_if_any(violations)
        after = _decode_page_token(page_token, query)
        limit = page_size or DEFAULT_PAGE_SIZE
        with self._db.begin() as session:
            rows = AuditRepository(session).list_page(
                user_id=query.user_id,
                start_time=query.start_time,
                end_time=query.end_time,
                after=after,
                oldest_first=query.oldest_first,
                limit=limit + 1,
            )
            events = [_view(row) for row in rows[:limit]]
        next_token = ""
        if len(rows) > limit:
            last = events[-1]
            next_token = _encode_page_token(last.occurred_at, last.event_id, query)
        return AuditPage(events=events, next_page_token=next_token)


def _view(row: GarminAuditEvent) -> AuditEventView:
    return AuditEventView(
        event_id=row.id,
        occurred_at=row.occurred_at,
        caller=row.caller,
        rpc=row.rpc,
        user_id=row.user_id,
        outcome_code=row.outcome_code,
        outcome_reason=row.outcome_reason,
        lease_id=row.lease_id,
        fencing_token=row.fencing_token,
    )


def _encode_page_token(occurred_at: datetime, event_id: int, query: AuditFilter) -> str:
    return encode_page_token({"at": occurred_at.isoformat(), "id": event_id}, query.fingerprint())


def _decode_page_token(token: str, query: AuditFilter) -> tuple[datetime, int] | None:
    position = decode_page_token(token, query.fingerprint())
    if position is None:
        return None
    at, event_id = position.get("at"), position.get("id")
    # Page tokens are not signed: a crafted position must not reach the query out of range
    # (an id beyond BIGINT, a time that overflows when converted to UTC).
    if (
        not isinstance(at, str)
        or not isinstance(event_id, int)
        or isinstance(event_id, bool)
        or not 0 <= event_id <= MAX_EVENT_ID
    ):
        raise page_tokens.not_ours()
    try:
        occurred_at = datetime.fromisoformat(at)
        in_utc = occurred_at.astimezone(UTC) if occurred_at.tzinfo is not None else None
    except (ValueError, OverflowError):
        raise page_tokens.not_ours() from None
    if in_utc is None:
        raise page_tokens.not_ours()
    return in_utc, event_id
