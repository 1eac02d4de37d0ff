"""Read models: what a stored session row looks like to callers (never a secret)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Protocol

from auth_service.domain.models import LeaseView, SessionKind, SessionState, SessionStatusView


class SessionRow(Protocol):
    """A garmin_authentication_state row as the repositories return it (the columns by
    name, with these types)."""

    @property
    def user_id(self) -> str: ...
    @property
    def state(self) -> SessionState: ...
    @property
    def session_ciphertext(self) -> bytes | None: ...
    @property
    def session_version(self) -> int: ...
    @property
    def access_token_expires_at(self) -> datetime | None: ...
    @property
    def session_kind(self) -> SessionKind | None: ...
    @property
    def refresh_token_expires_at(self) -> datetime | None: ...
    @property
    def refresh_claim_id(self) -> str | None: ...
    @property
    def refresh_claimed_until(self) -> datetime | None: ...
    @property
    def lease_id(self) -> str | None:
        """The SHA-256 digest of the lease id (auth_service.domain.lease_ids), never the id."""
        ...

    @property
    def lease_holder(self) -> str | None: ...
    @property
    def lease_acquired_at(self) -> datetime | None: ...
    @property
    def lease_expires_at(self) -> datetime | None: ...
    @property
    def fencing_token(self) -> int: ...
    @property
    def last_validated_at(self) -> datetime | None: ...
    @property
    def last_synced_at(self) -> datetime | None: ...
    @property
    def synced_through(self) -> datetime | None: ...
    @property
    def last_sync_attempt_at(self) -> datetime | None: ...
    @property
    def invalidated_reason(self) -> str | None: ...
    @property
    def invalidated_at(self) -> datetime | None: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def lease_caller(self) -> str | None: ...
    @property
    def rotated_refresh_sha256(self) -> str | None:
        """The digest of the DI refresh token the latest rotation replaced
        (refresh_token_digest), never the token."""
        ...


def live_lease(row: SessionRow, now: datetime) -> LeaseView | None:
    """The row's lease if it is still live at `now`."""
    if (
        row.lease_id is None
        or row.lease_expires_at is None
        or row.lease_acquired_at is None
        or row.lease_expires_at <= now
    ):
        return None
    return LeaseView(
        lease_digest=row.lease_id,
        user_id=row.user_id,
        holder=row.lease_holder or "",
        fencing_token=row.fencing_token,
        acquired_at=row.lease_acquired_at,
        expires_at=row.lease_expires_at,
    )


def status_view(row: SessionRow, now: datetime) -> SessionStatusView:
    # Why and when the session ended belong to AUTH_EXPIRED only (the contract); the row keeps
    # them through a new login's MFA_PENDING, which falls back to AUTH_EXPIRED if abandoned.
    ended = row.state == SessionState.AUTH_EXPIRED
    return SessionStatusView(
        user_id=row.user_id,
        state=row.state,
        session_version=row.session_version,
        last_validated_at=row.last_validated_at,
        access_token_expires_at=row.access_token_expires_at,
        kind=row.session_kind,
        refresh_token_expires_at=row.refresh_token_expires_at,
        last_synced_at=row.last_synced_at,
        synced_through=row.synced_through,
        last_sync_attempt_at=row.last_sync_attempt_at,
        invalidated_reason=row.invalidated_reason if ended else None,
        invalidated_at=row.invalidated_at if ended else None,
        updated_at=row.updated_at,
        lease=live_lease(row, now),
    )


# --- refresh tokens rotated away ---------------------------------------------------------


def refresh_token_digest(refresh_token: str) -> str:
    """What a row keeps of the refresh token a rotation replaced: its lowercase hex SHA-256.
    Unkeyed, as lease ids (auth_service.domain.lease_ids): Garmin's refresh tokens carry
    far too much entropy for a digest to be inverted or guessed."""
    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()


def rotated_away(row: SessionRow, refresh_token: str) -> bool:
    """Whether `refresh_token` is the one the row's latest rotation replaced (dead at
    Garmin since), compared in constant time."""
    stored = row.rotated_refresh_sha256
    if stored is None:
        return False
    return hmac.compare_digest(stored.encode(), refresh_token_digest(refresh_token).encode())
