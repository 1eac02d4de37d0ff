"""Garmin's tokens for one user, as the service stores them and the worker uses them.

Plain values (stdlib only): the service's domain re-exports them, the worker builds them from
the lease it was granted. Every one of them is a secret: their reprs hide the token text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class SessionKind(enum.StrEnum):
    """Which of Garmin's sign-ins a session comes from (mirrors garmin_auth.v1.SessionKind)."""

    # garth's legacy flow: an OAuth1 token (lives ~1 year) exchanged for OAuth2 access tokens.
    GARTH = "GARTH"
    # Garmin's current DI OAuth2 sign-in: rotating refresh tokens bound to a client id.
    DI_OAUTH2 = "DI_OAUTH2"


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
    # None: not known, as for a DI pair imported from python-garminconnect's token file (it
    # stores no expiry); such a session is due for keep-alive at once.
    refresh_token_expires_at: datetime | None

    def __repr__(self) -> str:
        return f"OAuth2Token(<redacted>, expires_at={self.expires_at.isoformat()})"


@dataclass(frozen=True, repr=False)
class GarminTokens:
    """One user's Garmin session: the stored, encrypted secret.

    A garth session has ``oauth1`` (exchanged for ``oauth2`` access tokens); a DI OAuth2
    session has ``di_client_id`` instead (every refresh must use it: refresh tokens are bound
    to their client id) and a rotating ``oauth2.refresh_token``.
    """

    oauth1: OAuth1Token | None
    oauth2: OAuth2Token
    domain: str = "garmin.com"
    di_client_id: str | None = None
    # DI: the refresh-token lifetime Garmin last stated for this session (refresh answers
    # usually omit it; the next expiry is then reckoned from this one).
    refresh_token_lifetime_seconds: int | None = None

    def __post_init__(self) -> None:
        if (self.oauth1 is None) == (self.di_client_id is None):
            raise ValueError("a session has either an OAuth1 token (garth) or a DI client id")

    def oauth1_token(self) -> OAuth1Token:
        """The garth session's OAuth1 token (a DI session has none: asking is a bug)."""
        if self.oauth1 is None:
            raise ValueError("a DI OAuth2 session has no OAuth1 token")
        return self.oauth1

    @property
    def kind(self) -> SessionKind:
        return SessionKind.GARTH if self.oauth1 is not None else SessionKind.DI_OAUTH2

    def __repr__(self) -> str:
        return f"GarminTokens(<redacted>, kind={self.kind.value}, domain={self.domain!r})"
