"""Garmin's tokens for one user, as the service stores them and the worker uses them.

Plain values (stdlib only): the service's domain re-exports them, the worker builds them from
the lease it was granted. Every one of them is a secret: their reprs hide the token text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, repr=False)
class OAuth1Token:
    """Garmin's long-lived OAuth1 token. Secret: never logged (repr hides it)."""

    oauth_token: str
    oauth_token_secret: str
    mfa_token: str | None = None
    mfa_expires_at: datetime | None = None

    def __repr__(self) -> str:
        return "OAuth1Token(<redacted>)"


@dataclass(frozen=True, repr=False)
class OAuth2Token:
    """Garmin's short-lived OAuth2 bearer token. Secret: never logged (repr hides it)."""

    scope: str
    jti: str
    token_type: str
    access_token: str
    refresh_token: str
    expires_at: datetime
    refresh_token_expires_at: datetime

    def __repr__(self) -> str:
        return f"OAuth2Token(<redacted>, expires_at={self.expires_at.isoformat()})"


@dataclass(frozen=True, repr=False)
class GarminTokens:
    """Everything garth needs to act as the user: the stored, encrypted session."""

    oauth1: OAuth1Token
    oauth2: OAuth2Token
    domain: str = "garmin.com"

    def __repr__(self) -> str:
        return f"GarminTokens(<redacted>, domain={self.domain!r})"
