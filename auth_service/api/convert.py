"""Conversions between protobuf messages and domain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from auth_service.domain.errors import FieldViolation, InvalidArgument
from auth_service.domain.models import (
    GarminTokens,
    LeaseView,
    OAuth1Token,
    OAuth2Token,
    SessionState,
    SessionStatusView,
)
from garmin_auth.v1 import garmin_auth_pb2 as pb

_STATE_TO_PROTO: dict[SessionState, pb.SessionState] = {
    SessionState.NOT_CONNECTED: pb.SESSION_STATE_NOT_CONNECTED,
    SessionState.MFA_PENDING: pb.SESSION_STATE_MFA_PENDING,
    SessionState.ACTIVE: pb.SESSION_STATE_ACTIVE,
    SessionState.AUTH_EXPIRED: pb.SESSION_STATE_AUTH_EXPIRED,
}
_STATE_FROM_PROTO: dict[int, SessionState] = {
    int(value): key for key, value in _STATE_TO_PROTO.items()
}

# google.protobuf.Duration's documented range: +-10,000 years.
_MAX_DURATION_SECONDS = 315_576_000_000
_NANOS_PER_SECOND = 10**9
# Timestamps outside this range are refused rather than overflowing datetime.
_MIN_SECONDS = int(datetime(1970, 1, 1, tzinfo=UTC).timestamp())
_MAX_SECONDS = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp())


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def from_timestamp(message: timestamp_pb2.Timestamp, field: str) -> datetime:
    if (
        not _MIN_SECONDS <= message.seconds <= _MAX_SECONDS
        or not 0 <= message.nanos < _NANOS_PER_SECOND
    ):
        raise InvalidArgument([FieldViolation(field, "is out of range")])
    return message.ToDatetime(tzinfo=UTC)


def from_duration(message: duration_pb2.Duration, field: str, *, present: bool) -> timedelta | None:
    """None when the field is unset; InvalidArgument when it cannot be a duration."""
    if not present:
        return None
    # Duration's own range is +-10,000 years; anything past a day gets refused later anyway.
    if abs(message.seconds) > _MAX_DURATION_SECONDS or abs(message.nanos) >= _NANOS_PER_SECOND:
        raise InvalidArgument([FieldViolation(field, "is not a valid duration")])
    return timedelta(seconds=message.seconds, microseconds=message.nanos // 1000)


def state_to_proto(state: SessionState) -> pb.SessionState:
    return _STATE_TO_PROTO[state]


def state_from_proto(value: int) -> SessionState | None:
    """None for UNSPECIFIED (no filter); InvalidArgument for an unknown number."""
    if value == pb.SESSION_STATE_UNSPECIFIED:
        return None
    state: SessionState | None = _STATE_FROM_PROTO.get(value)
    if state is None:
        raise InvalidArgument([FieldViolation("state", f"unknown session state {value}")])
    return state


def lease_to_proto(lease: LeaseView | None, *, reveal_lease_id: bool = True) -> pb.Lease | None:
    if lease is None:
        return None
    return pb.Lease(
        # A lease id is its holder's key to renew, report and release: only the holder sees
        # it (in the answers to its own lease calls), never a status reader.
        lease_id=lease.lease_id if reveal_lease_id else "",
        user_id=lease.user_id,
        holder=lease.holder,
        fencing_token=lease.fencing_token,
        acquired_at=timestamp(lease.acquired_at),
        expires_at=timestamp(lease.expires_at),
    )


def status_to_proto(
    status: SessionStatusView, *, reveal_lease_id: bool = False
) -> pb.SessionStatus:
    return pb.SessionStatus(
        user_id=status.user_id,
        state=state_to_proto(status.state),
        last_validated_at=timestamp(status.last_validated_at),
        access_token_expires_at=timestamp(status.access_token_expires_at),
        last_synced_at=timestamp(status.last_synced_at),
        synced_through=timestamp(status.synced_through),
        invalidated_reason=status.invalidated_reason or "",
        lease=lease_to_proto(status.lease, reveal_lease_id=reveal_lease_id),
        invalidated_at=timestamp(status.invalidated_at),
        session_version=status.session_version,
        last_sync_attempt_at=timestamp(status.last_sync_attempt_at),
        updated_at=timestamp(status.updated_at),
    )


def tokens_to_proto(tokens: GarminTokens) -> pb.GarminSession:
    o1, o2 = tokens.oauth1, tokens.oauth2
    return pb.GarminSession(
        oauth1=pb.OAuth1Token(
            oauth_token=o1.oauth_token,
            oauth_token_secret=o1.oauth_token_secret,
            mfa_token=o1.mfa_token or "",
            mfa_expires_at=timestamp(o1.mfa_expires_at),
        ),
        oauth2=pb.OAuth2Token(
            scope=o2.scope,
            jti=o2.jti,
            token_type=o2.token_type,
            access_token=o2.access_token,
            refresh_token=o2.refresh_token,
            expires_at=timestamp(o2.expires_at),
            refresh_token_expires_at=timestamp(o2.refresh_token_expires_at),
        ),
        domain=tokens.domain,
    )


_MAX_TOKEN_FIELD = 8192
_DOMAINS = {"garmin.com", "garmin.cn"}


def _required_text(value: str, field: str, violations: list[FieldViolation]) -> None:
    if not value:
        violations.append(FieldViolation(field, "is required"))
    elif len(value) > _MAX_TOKEN_FIELD or not value.isprintable():
        violations.append(
            FieldViolation(field, f"must be at most {_MAX_TOKEN_FIELD} printable characters")
        )


def tokens_from_proto(session: pb.GarminSession, field: str) -> GarminTokens:
    """Validate and convert a GarminSession; InvalidArgument lists every bad field."""
    violations: list[FieldViolation] = []
    if not session.HasField("oauth1"):
        violations.append(FieldViolation(f"{field}.oauth1", "is required"))
    if not session.HasField("oauth2"):
        violations.append(FieldViolation(f"{field}.oauth2", "is required"))
    if session.domain and session.domain not in _DOMAINS:
        violations.append(FieldViolation(f"{field}.domain", f"must be one of {sorted(_DOMAINS)}"))
    if violations:
        raise InvalidArgument(violations)
    o1, o2 = session.oauth1, session.oauth2
    for name in ("oauth_token", "oauth_token_secret"):
        _required_text(getattr(o1, name), f"{field}.oauth1.{name}", violations)
    if len(o1.mfa_token) > _MAX_TOKEN_FIELD or not o1.mfa_token.isprintable():
        violations.append(FieldViolation(f"{field}.oauth1.mfa_token", "is malformed"))
    for name in ("scope", "jti", "token_type", "access_token", "refresh_token"):
        _required_text(getattr(o2, name), f"{field}.oauth2.{name}", violations)
    for name in ("expires_at", "refresh_token_expires_at"):
        if not o2.HasField(name):
            violations.append(FieldViolation(f"{field}.oauth2.{name}", "is required"))
    if violations:
        raise InvalidArgument(violations)
    mfa_expires_at = (
        from_timestamp(o1.mfa_expires_at, f"{field}.oauth1.mfa_expires_at")
        if o1.HasField("mfa_expires_at")
        else None
    )
    return GarminTokens(
        oauth1=OAuth1Token(
            oauth_token=o1.oauth_token,
            oauth_token_secret=o1.oauth_token_secret,
            mfa_token=o1.mfa_token or None,
            mfa_expires_at=mfa_expires_at,
        ),
        oauth2=OAuth2Token(
            scope=o2.scope,
            jti=o2.jti,
            token_type=o2.token_type,
            access_token=o2.access_token,
            refresh_token=o2.refresh_token,
            expires_at=from_timestamp(o2.expires_at, f"{field}.oauth2.expires_at"),
            refresh_token_expires_at=from_timestamp(
                o2.refresh_token_expires_at, f"{field}.oauth2.refresh_token_expires_at"
            ),
        ),
        domain=session.domain or "garmin.com",
    )
