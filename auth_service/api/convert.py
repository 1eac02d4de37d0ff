"""Conversions between protobuf messages and domain values, validating what callers send.

Garmin tokens travel as garmin_client.session_proto writes and reads them; this module adds
the service's input limits (domain.validation's, which every way a session comes in shares)
and turns every problem into field violations (INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from auth_service.domain import validation
from auth_service.domain.errors import FieldViolation, InvalidArgument
from auth_service.domain.jwt_payload import di_issuer_domain
from auth_service.domain.models import (
    GarminTokens,
    LeaseView,
    SessionKind,
    SessionState,
    SessionStatusView,
)
from auth_service.upstream.di.garminconnect import di_pair_problem, di_scope_problem
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client import session_proto
from garmin_client.endpoints import DEFAULT_DOMAIN, DOMAINS
from garmin_client.session_proto import (
    MalformedSession,
    timestamp_in_range,
)

_STATE_TO_PROTO: dict[SessionState, pb.SessionState] = {
    SessionState.NOT_CONNECTED: pb.SESSION_STATE_NOT_CONNECTED,
    SessionState.MFA_PENDING: pb.SESSION_STATE_MFA_PENDING,
    SessionState.ACTIVE: pb.SESSION_STATE_ACTIVE,
    SessionState.AUTH_EXPIRED: pb.SESSION_STATE_AUTH_EXPIRED,
}
_STATE_FROM_PROTO: dict[int, SessionState] = {
    int(value): key for key, value in _STATE_TO_PROTO.items()
}
_KIND_FROM_PROTO: dict[int, SessionKind] = {
    int(value): key for key, value in session_proto.KINDS.items()
}

# google.protobuf.Duration's documented range: +-10,000 years.
_MAX_DURATION_SECONDS = 315_576_000_000
_NANOS_PER_SECOND = 10**9


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for a datetime (None stays unset). What handing the datetime to the message
    does, at half its cost (Timestamp.FromDatetime goes through a time tuple); an answer
    carries up to eleven of them. A naive datetime is taken as UTC, as FromDatetime takes it."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    since = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000
    )


def from_timestamp(
    message: timestamp_pb2.Timestamp, field: str, *, bound: bool = False
) -> datetime:
    """The instant `message` names, to the microsecond (what is stored). A `bound` of a time
    range rounds up: stored times are whole microseconds, so "at or after" and "before" a
    bound inside a microsecond mean the same as at the next one; cut down instead, an event
    up to 999 ns before the bound counted as after it."""
    if not timestamp_in_range(message):
        raise InvalidArgument([FieldViolation(field, "is out of range")])
    moment = message.ToDatetime(tzinfo=UTC)
    if bound and message.nanos % 1_000:
        moment += timedelta(microseconds=1)
    return moment


def time_range(request: pb.ListAuditEventsRequest) -> tuple[datetime | None, datetime | None]:
    """A request's [start_time, end_time) as bounds to the microsecond (from_timestamp),
    None where unset. Two bounds inside one microsecond both round up to its end: an empty
    range, as sent. A range that was empty or inverted as sent stays inverted, so the use
    case names it (with every other bad field) rather than answering it empty."""
    if not (request.HasField("start_time") and request.HasField("end_time")):
        return (
            from_timestamp(request.start_time, "start_time", bound=True)
            if request.HasField("start_time")
            else None,
            from_timestamp(request.end_time, "end_time", bound=True)
            if request.HasField("end_time")
            else None,
        )
    start = from_timestamp(request.start_time, "start_time", bound=True)
    end = from_timestamp(request.end_time, "end_time", bound=True)
    if _not_after(request.end_time, request.start_time):
        end = min(end, start - timedelta(microseconds=1))
    return start, end


def _not_after(one: timestamp_pb2.Timestamp, other: timestamp_pb2.Timestamp) -> bool:
    return (one.seconds, one.nanos) <= (other.seconds, other.nanos)


def from_duration(message: duration_pb2.Duration, field: str, *, present: bool) -> timedelta | None:
    """None when the field is unset; InvalidArgument when it cannot be a duration."""
    if not present:
        return None
    if not _is_valid_duration(message):
        raise InvalidArgument([FieldViolation(field, "is not a valid duration")])
    return timedelta(seconds=message.seconds, microseconds=message.nanos // 1000)


def _is_valid_duration(message: duration_pb2.Duration) -> bool:
    """What google.protobuf.Duration's own contract allows: +-10,000 years (anything past a
    day gets refused later anyway), |nanos| under a second, and nanos of the same sign as a
    non-zero seconds ({seconds: 60, nanos: -1} is no duration, not 59.999999999 s)."""
    return (
        abs(message.seconds) <= _MAX_DURATION_SECONDS
        and abs(message.nanos) < _NANOS_PER_SECOND
        and message.seconds * message.nanos >= 0
    )


def state_to_proto(state: SessionState) -> pb.SessionState:
    return _STATE_TO_PROTO[state]


_Member = TypeVar("_Member")


def _filter_value(
    value: int, members: Mapping[int, _Member], field: str, what: str
) -> tuple[_Member | None, list[FieldViolation]]:
    """A filter's enum number: None for UNSPECIFIED (0 in every enum of ours: buf's STANDARD
    lint), and for a number this release does not know, which comes with its violation."""
    if value == 0:
        return None, []
    member = members.get(value)
    if member is None:
        return None, [FieldViolation(field, f"unknown session {what} {value}")]
    return member, []


def state_filter(value: int, field: str) -> tuple[SessionState | None, list[FieldViolation]]:
    """A state to filter by (None: none), and the violation of `field` for an unknown one."""
    return _filter_value(value, _STATE_FROM_PROTO, field, "state")


def listing_filter(
    request: pb.ListSessionsRequest,
) -> tuple[SessionState | None, SessionKind | None]:
    """ListSessions' state and kind filters; InvalidArgument names every unknown number."""
    state, unknown_state = state_filter(request.state, "state")
    kind, unknown_kind = _filter_value(request.kind, _KIND_FROM_PROTO, "kind", "kind")
    validation.raise_if_any(unknown_state, unknown_kind)
    return state, kind


def access_to_proto(tokens: GarminTokens) -> pb.AccessToken:
    """What a worker needs to call the Connect API, and nothing that outlives it."""
    return pb.AccessToken(
        token=tokens.oauth2.access_token,
        token_type=tokens.oauth2.token_type,
        expires_at=to_timestamp(tokens.oauth2.expires_at),
        domain=tokens.domain or "garmin.com",
    )


def lease_to_proto(lease: LeaseView | None, *, reveal_lease_id: bool = True) -> pb.Lease | None:
    if lease is None:
        return None
    return pb.Lease(
        # A lease id is its holder's key to renew, report and release: only the holder sees
        # it (in the answers to its own lease calls), never a status reader.
        lease_id=lease.lease_id if reveal_lease_id else "",
        lease_ref=lease.lease_ref,
        user_id=lease.user_id,
        holder=lease.holder,
        fencing_token=lease.fencing_token,
        acquired_at=to_timestamp(lease.acquired_at),
        expires_at=to_timestamp(lease.expires_at),
    )


def status_to_proto(
    status: SessionStatusView, *, reveal_lease_id: bool = False
) -> pb.SessionStatus:
    return pb.SessionStatus(
        user_id=status.user_id,
        state=state_to_proto(status.state),
        last_validated_at=to_timestamp(status.last_validated_at),
        access_token_expires_at=to_timestamp(status.access_token_expires_at),
        last_synced_at=to_timestamp(status.last_synced_at),
        synced_through=to_timestamp(status.synced_through),
        invalidated_reason=status.invalidated_reason or "",
        lease=lease_to_proto(status.lease, reveal_lease_id=reveal_lease_id),
        invalidated_at=to_timestamp(status.invalidated_at),
        session_version=status.session_version,
        last_sync_attempt_at=to_timestamp(status.last_sync_attempt_at),
        updated_at=to_timestamp(status.updated_at),
        kind=session_proto.KINDS[status.kind] if status.kind else pb.SESSION_KIND_UNSPECIFIED,
        refresh_token_expires_at=to_timestamp(status.refresh_token_expires_at),
    )


def _check_oauth1(o1: pb.OAuth1Token, field: str, violations: list[FieldViolation]) -> None:
    for name in validation.OAUTH1_TEXTS:
        violations += validation.check_token_text(name, getattr(o1, name), f"{field}.{name}")


def tokens_from_proto(session: pb.GarminSession, field: str) -> GarminTokens:
    """Validate and convert a GarminSession; InvalidArgument lists every bad field."""
    try:
        kind = session_proto.kind_of(session)
    except MalformedSession as exc:
        raise InvalidArgument([FieldViolation(f"{field}.{exc.field}", exc.problem)]) from None
    parts = ("oauth1", "oauth2") if kind is SessionKind.GARTH else ("oauth2",)
    violations = [
        FieldViolation(f"{field}.{part}", "is required")
        for part in parts
        if not session.HasField(part)
    ]
    if session.domain and session.domain not in DOMAINS:
        violations.append(FieldViolation(f"{field}.domain", f"must be one of {sorted(DOMAINS)}"))
    if violations:
        raise InvalidArgument(violations)
    o2 = session.oauth2
    if kind is SessionKind.GARTH:
        _check_oauth1(session.oauth1, f"{field}.oauth1", violations)
    else:
        violations += validation.check_token_text(
            "di_client_id", session.di_client_id, f"{field}.di_client_id"
        )
    for name in validation.OAUTH2_TEXTS:
        violations += validation.check_token_text(name, getattr(o2, name), f"{field}.oauth2.{name}")
    if kind is SessionKind.DI_OAUTH2 and not violations:
        violations += _di_pair_violations(session, field)
    # A DI pair may come without its refresh expiry (the service learns it at the next refresh).
    times = (
        ("expires_at",)
        if kind is SessionKind.DI_OAUTH2
        else ("expires_at", "refresh_token_expires_at")
    )
    for name in times:
        if not o2.HasField(name):
            violations.append(FieldViolation(f"{field}.oauth2.{name}", "is required"))
    if violations:
        raise InvalidArgument(violations)
    try:
        tokens = session_proto.tokens_from_proto(session)
    except MalformedSession as exc:
        # The checks above passed: what is left is a time out of range or a stray part.
        raise InvalidArgument([FieldViolation(f"{field}.{exc.field}", exc.problem)]) from None
    # Its texts met the same rules above, field by field, to name every bad one at once;
    # the times the wire reader took must also be ones the service stores.
    validation.raise_if_any(validation.check_token_times(tokens, field))
    return tokens


def _di_pair_violations(session: pb.GarminSession, field: str) -> list[FieldViolation]:
    """What makes a DI pair one that cannot refresh where it would be stored."""
    violations = []
    o2 = session.oauth2
    # As for python-garminconnect's file: a refresh token only works with the client id it
    # was issued to, so a pair naming another one would die at its first refresh.
    problem = di_pair_problem(o2.access_token, session.di_client_id)
    if problem is not None:
        violations.append(FieldViolation(f"{field}.di_client_id", problem))
    scope_problem = di_scope_problem(o2.access_token)
    if scope_problem is not None:
        violations.append(FieldViolation(f"{field}.oauth2.access_token", scope_problem))
    # And only at the diauth that issued it (diauth.garmin.cn for garmin.cn accounts):
    # stored under another domain, the pair would be refreshed at the other Garmin.
    issuer = di_issuer_domain(o2.access_token)
    domain = session.domain or DEFAULT_DOMAIN
    if issuer is not None and issuer != domain:
        violations.append(
            FieldViolation(
                f"{field}.domain",
                f"is {domain}, and the access token was issued by diauth.{issuer} (the pair "
                f"refreshes only there): set it to {issuer}",
            )
        )
    return violations
