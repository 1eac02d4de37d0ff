"""What the domain needs from Garmin. The providers in auth_service.upstream implement it
(garth's legacy sign-in and Garmin's DI OAuth2, behind one router); tests use the real
providers against the emulator over HTTP.

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

    def exchange_service_ticket(self, ticket: str, service_url: str) -> GarminTokens:
        """A DI session for a service ticket the user got from Garmin's own sign-in page.

        Raises ServiceTicketRejected (used, expired, another service URL), GarminRateLimited,
        GarminUnavailable.
        """
        ...

    def refresh(self, tokens: GarminTokens) -> GarminTokens:
        """A fresh access token: garth exchanges the OAuth1 token; DI rotates the refresh
        token (the old one dies: the answer must be stored before anything else).

        Raises GarminSessionRejected (the session is dead: 401 on garth's exchange, once it
        cannot be Garmin refusing our OAuth consumer or clock; DI's invalid_grant),
        GarminRateLimited or GarminUnavailable (the session is untouched).
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
