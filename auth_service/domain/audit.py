"""The audit trail's values: who changed whose session, through which RPC, and how it ended.

Writing. The use cases record through their unit of work (auth_service.services.unit_of_work),
inside the very transaction that makes the change, so an event exists if and only if its
change was committed. The rule:

- Every committed change of an RPC writes one event: Login, SubmitMfa, ImportSession,
  DeleteSession (when the user had a row), LeaseSession and LeaseNextSession (per grant),
  RenewLease, ReleaseLease, ReportRefreshed, ReportInvalidated, RefreshLease when it refreshed
  (or Garmin's refusal invalidated the session), and GetStatus with validate when Garmin's
  answer was stored. A lease grant whose token needed a central refresh writes a
  second event for the refresh's own change (tokens stored, session invalidated, or the
  unusable lease released), and a grant whose stored session fails to open, one for the
  lease's release (outcome DATA_LOSS SECRET_UNREADABLE).
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
challenge id. A lease is recorded by its id's digest (auth_service.domain.lease_ids), and
only when the service granted it; readers of the trail see the digest's short reference.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from auth_service.domain.context import current_caller_name
from auth_service.domain.errors import DomainError, LeaseLost

SYSTEM_CALLER = "system"
# The longest caller name an event keeps (the column's width).
CALLER_LENGTH = 256


class AuditedRpc(enum.StrEnum):
    """The RPCs that write audit events (their names in garmin_auth.v1)."""

    LOGIN = "Login"
    SUBMIT_MFA = "SubmitMfa"
    GET_STATUS = "GetStatus"
    IMPORT_SESSION = "ImportSession"
    EXCHANGE_SERVICE_TICKET = "ExchangeServiceTicket"
    DELETE_SESSION = "DeleteSession"
    LEASE_SESSION = "LeaseSession"
    LEASE_NEXT_SESSION = "LeaseNextSession"
    RENEW_LEASE = "RenewLease"
    RELEASE_LEASE = "ReleaseLease"
    REPORT_REFRESHED = "ReportRefreshed"
    REPORT_INVALIDATED = "ReportInvalidated"
    REFRESH_LEASE = "RefreshLease"
    # Not an RPC: the background refresh of DI sessions whose refresh token dies soon.
    KEEP_ALIVE = "KeepAlive"
    # Not an RPC, and no audit event (time caused it): housekeeping settling a sign-in whose
    # MFA challenge expired unanswered, named so in the change log.
    HOUSEKEEPING = "Housekeeping"


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
# Garmin answered 429 for the account: no call for it reaches Garmin until the cooldown
# ends (auth_service.services.garmin_gate). Recorded once per cooldown, under the RPC (or
# KeepAlive) whose call met the 429.
COOLDOWN_STARTED = Outcome("OK", "GARMIN_COOLDOWN_STARTED")
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

    lease_digest: str
    fencing_token: int | None


@dataclass(frozen=True)
class NewAuditEvent:
    """The columns of one event to insert (the id is the database's)."""

    occurred_at: datetime
    caller: str
    rpc: str
    user_id: str | None
    outcome_code: str
    outcome_reason: str
    # The lease id's digest (the column keeps its name lease_id; migration 0009).
    lease_id: str | None = None
    fencing_token: int | None = None


@dataclass(frozen=True)
class LeaseOwner:
    """Whom a lease was granted to, as the audit trail recorded the grant."""

    user_id: str
    fencing_token: int | None


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
    # The lease's non-secret reference (auth_service.domain.lease_ids.lease_ref), never its id.
    lease_ref: str | None
    fencing_token: int | None


@dataclass(frozen=True)
class AuditPage:
    """One page of ListAuditEvents."""

    events: list[AuditEventView]
    next_page_token: str


@dataclass(frozen=True)
class AuditFilter:
    """What ListAuditEvents lists: a user (or everyone) within [start_time, end_time); for a
    scoped caller, only events about users whose id starts with `user_id_prefix`."""

    user_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    oldest_first: bool = False
    user_id_prefix: str | None = None

    def fingerprint(self) -> str:
        """A short digest that ties a page token to the filter it was issued for."""
        parts: list[object] = [
            self.user_id,
            self.start_time.isoformat() if self.start_time else None,
            self.end_time.isoformat() if self.end_time else None,
            self.oldest_first,
        ]
        if self.user_id_prefix is not None:
            # Only when set, so the tokens unscoped callers already hold stay valid.
            parts.append(self.user_id_prefix)
        payload = json.dumps(parts)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
