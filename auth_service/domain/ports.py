"""What the domain needs from Garmin. The providers in auth_service.upstream implement it (the
garth one today); tests use the real provider against the emulator over HTTP.

Every method raises only the UpstreamError subclasses of auth_service.domain.errors:
GarminSessionRejected is the one that means "this session is dead"; GarminRateLimited and
GarminUnavailable mean "try later" and must never invalidate anything.
"""

from __future__ import annotations

from typing import Protocol

from auth_service.domain.models import GarminTokens, LoginResult, PendingMfa


class GarminUpstream(Protocol):
    """Garmin, as the service uses it."""

    def login(self, email: str, password: str) -> LoginResult:
        """Log in; raises GarminCredentialsRejected, GarminRateLimited, GarminUnavailable."""
        ...

    def resume_mfa(self, pending: PendingMfa, code: str) -> GarminTokens:
        """Finish an MFA login; raises MfaCodeRejected, GarminRateLimited, GarminUnavailable."""
        ...

    def refresh(self, tokens: GarminTokens) -> GarminTokens:
        """Exchange the OAuth1 token for a fresh OAuth2 token.

        Raises GarminSessionRejected (401: the session is dead), GarminRateLimited or
        GarminUnavailable (the session is untouched and still good).
        """
        ...

    def validate(self, tokens: GarminTokens, *, allow_refresh: bool) -> GarminTokens:
        """Make one light authenticated API call (the social profile).

        Refreshes first when the access token has expired and allow_refresh is true; returns
        the tokens in force afterwards (the same object when nothing was refreshed). With
        allow_refresh false (a lease holder owns refreshing) it never refreshes: the caller
        checks beforehand that the access token has not expired.
        """
        ...
