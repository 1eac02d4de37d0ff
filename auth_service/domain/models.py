"""Plain domain values shared by the service layer, the storage layer and the upstream adapter."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

# The token values are shared with the worker (garmin_client); the domain speaks of them too.
from auth_service.domain.lease_ids import lease_ref
from garmin_client.tokens import GarminTokens, OAuth1Token, OAuth2Token, SessionKind

__all__ = [
    "GarminTokens",
    "LeaseGrant",
    "LeaseView",
    "LoginNeedsMfa",
    "LoginResult",
    "LoginSucceeded",
    "OAuth1Token",
    "OAuth2Token",
    "PendingMfa",
    "SessionKind",
    "SessionState",
    "SessionStatusView",
]


class SessionState(enum.StrEnum):
    """Stored state of a user's session (mirrors garmin_auth.v1.SessionState)."""

    NOT_CONNECTED = "NOT_CONNECTED"
    MFA_PENDING = "MFA_PENDING"
    ACTIVE = "ACTIVE"
    AUTH_EXPIRED = "AUTH_EXPIRED"


MFA_METHOD_SHOWN_LENGTH = 32


def _surrogate(character: str) -> bool:
    return "\ud800" <= character <= "\udfff"


@dataclass(frozen=True, repr=False)
class PendingMfa:
    """What a replica needs to finish a login that Garmin interrupted for MFA.

    Holds Garmin's SSO cookies (the code is bound to them): secret, stored encrypted.
    """

    cookies: list[dict[str, str | None]]
    login_params: dict[str, str]
    mfa_method: str
    domain: str
    # The sign-in that started the login, so the same one finishes it on any replica.
    flow: SessionKind = SessionKind.GARTH

    @property
    def mfa_method_shown(self) -> str:
        """The method as the service shows and files it (LoginResponse, the challenge row):
        Garmin's word with what no database or protobuf string can hold (NUL and other
        control characters, lone UTF-16 surrogates) left out, at most 32 characters. The
        sealed pending login keeps Garmin's word as it came, for the verification."""
        shown = "".join(c for c in self.mfa_method if c.isprintable() and not _surrogate(c))
        return shown[:MFA_METHOD_SHOWN_LENGTH] or "unknown"

    def __repr__(self) -> str:
        return (
            f"PendingMfa(<redacted>, mfa_method={self.mfa_method!r}, domain={self.domain!r}, "
            f"flow={self.flow.value})"
        )


@dataclass(frozen=True)
class LoginSucceeded:
    """Garmin accepted the credentials without MFA."""

    tokens: GarminTokens


@dataclass(frozen=True)
class LoginNeedsMfa:
    """Garmin wants an MFA code before it issues tokens."""

    pending: PendingMfa


LoginResult = LoginSucceeded | LoginNeedsMfa


@dataclass(frozen=True)
class LeaseView:
    """A live lease as callers see it.

    `lease_digest` is what the database keeps of the lease id (auth_service.domain.lease_ids);
    `lease_id` itself is set only in the answer to the holder's own grant, and empty in every
    view read back from a row."""

    lease_digest: str
    user_id: str
    holder: str
    fencing_token: int
    acquired_at: datetime
    expires_at: datetime
    lease_id: str = field(default="", repr=False)

    @property
    def lease_ref(self) -> str:
        """The lease's non-secret reference, as status readers and the audit trail see it."""
        return lease_ref(self.lease_digest)


@dataclass(frozen=True)
class SessionStatusView:
    """A session's status as callers see it: never a secret."""

    user_id: str
    state: SessionState
    session_version: int = 0
    last_validated_at: datetime | None = None
    access_token_expires_at: datetime | None = None
    kind: SessionKind | None = None
    refresh_token_expires_at: datetime | None = None
    last_synced_at: datetime | None = None
    synced_through: datetime | None = None
    last_sync_attempt_at: datetime | None = None
    invalidated_reason: str | None = None
    invalidated_at: datetime | None = None
    updated_at: datetime | None = None
    lease: LeaseView | None = field(default=None)


@dataclass(frozen=True)
class LeaseGrant:
    """A granted lease with the tokens to use under it."""

    lease: LeaseView
    tokens: GarminTokens
    status: SessionStatusView
