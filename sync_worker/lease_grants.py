"""What the auth service's answers mean to the worker, as our own values.

The client reads each answer here once, so no protobuf message reaches the rest of the
worker: a granted lease becomes a ``LeasedSession`` (its access token included, repr redacted)
and a session's status a ``SessionStatus``. The worker never sees more of a session than an
access token: nothing it holds outlives the token.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.endpoints import DOMAINS
from garmin_client.session_proto import MalformedSession, timestamp_in_range


class SessionState(enum.Enum):
    """Where a user's connection stands, as garmin_auth.v1.SessionState numbers it."""

    # Also what a newer service's state this worker does not know reads as.
    UNSPECIFIED = pb.SESSION_STATE_UNSPECIFIED
    NOT_CONNECTED = pb.SESSION_STATE_NOT_CONNECTED
    MFA_PENDING = pb.SESSION_STATE_MFA_PENDING
    ACTIVE = pb.SESSION_STATE_ACTIVE
    AUTH_EXPIRED = pb.SESSION_STATE_AUTH_EXPIRED


@dataclass(frozen=True)
class SessionStatus:
    """What the service says of a user's session (none of it is secret)."""

    user_id: str
    state: SessionState
    session_version: int
    # How far syncs got and when the last one succeeded; None when never.
    synced_through: datetime | None
    last_synced_at: datetime | None
    # Why the session became AUTH_EXPIRED; empty otherwise.
    invalidated_reason: str


@dataclass(frozen=True, repr=False)
class AccessToken:
    """A bearer token for connectapi.<domain> and the session version it belongs to (which
    RefreshLease wants back). Secret: the repr hides it."""

    token: str
    token_type: str
    expires_at: datetime
    domain: str
    session_version: int

    def __repr__(self) -> str:
        return f"AccessToken(<redacted>, expires_at={self.expires_at.isoformat()})"


@dataclass(frozen=True, repr=False)
class LeasedSession:
    """A granted lease with the access token to use under it."""

    lease_id: str
    user_id: str
    holder: str
    fencing_token: int
    expires_at: datetime
    # How far earlier syncs got; None when never synced.
    synced_through: datetime | None
    access: AccessToken
    status: SessionStatus

    def __repr__(self) -> str:
        return f"LeasedSession(user_id={self.user_id!r}, fencing_token={self.fencing_token})"


def read_datetime(message: timestamp_pb2.Timestamp) -> datetime:
    return message.ToDatetime(tzinfo=UTC)


def read_status(status: pb.SessionStatus) -> SessionStatus:
    try:
        state = SessionState(status.state)
    except ValueError:
        state = SessionState.UNSPECIFIED
    return SessionStatus(
        user_id=status.user_id,
        state=state,
        session_version=status.session_version,
        synced_through=_when(status.HasField("synced_through"), status.synced_through),
        last_synced_at=_when(status.HasField("last_synced_at"), status.last_synced_at),
        invalidated_reason=status.invalidated_reason,
    )


def read_access(access: pb.AccessToken, session_version: int) -> AccessToken:
    """The access token answered; MalformedSession when it cannot be used."""
    if not access.token:
        raise MalformedSession("access.token", "is empty")
    if access.domain not in DOMAINS:
        raise MalformedSession("access.domain", "is not a Garmin domain")
    if not access.HasField("expires_at") or not timestamp_in_range(access.expires_at):
        raise MalformedSession("access.expires_at", "is missing or out of range")
    return AccessToken(
        token=access.token,
        token_type=access.token_type or "Bearer",
        expires_at=read_datetime(access.expires_at),
        domain=access.domain,
        session_version=session_version,
    )


def read_grant(lease: pb.Lease, access: pb.AccessToken, status: pb.SessionStatus) -> LeasedSession:
    """The lease granted; MalformedSession when its access token cannot be used."""
    read = read_status(status)
    token = read_access(access, read.session_version)
    return LeasedSession(
        lease_id=lease.lease_id,
        user_id=lease.user_id,
        holder=lease.holder,
        fencing_token=lease.fencing_token,
        expires_at=read_datetime(lease.expires_at),
        synced_through=read.synced_through,
        access=token,
        status=read,
    )


def _when(present: bool, message: timestamp_pb2.Timestamp) -> datetime | None:
    return read_datetime(message) if present else None
