"""``GarminUpstream`` for DI OAuth2 sessions: login and MFA (sso), the ticket exchange with the
configured client ids, rotating refreshes (token_endpoint) and validation against the
Connect API with the session's Bearer token and the app headers.

Raises only the domain's ``UpstreamError`` subclasses, with messages that never contain a
token, password, cookie or ticket. Thread-safe: nothing is shared between calls.
"""

from __future__ import annotations

import logging
from typing import Final

from auth_service.domain.clock import Clock, SystemClock
from auth_service.domain.errors import (
    GarminSessionRejected,
    GarminUnavailable,
    ServiceTicketRejected,
    UpstreamError,
)
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.models import (
    GarminTokens,
    LoginNeedsMfa,
    LoginResult,
    LoginSucceeded,
    PendingMfa,
)
from auth_service.domain.policies import DiSettings, RefusedClientId
from auth_service.upstream.di.sso import SsoLogin
from auth_service.upstream.di.sso_http import SsoHttp
from auth_service.upstream.di.token_endpoint import ClientIdRefused, TokenEndpoint
from auth_service.upstream.errors import as_domain
from auth_service.upstream.observer import RpcListenerObserver
from garmin_client.connect_api import ConnectApi
from garmin_client.endpoints import DEFAULT_DOMAIN, PROFILE_PATH
from garmin_client.errors import AccessTokenRejected, GarminError
from garmin_client.retry import RetryPolicy
from garmin_client.settings import UpstreamSettings

log = logging.getLogger(__name__)

# validate() refreshes an access token this close to its expiry, so it does not lapse mid-call.
EXPIRY_MARGIN_SECONDS: Final = 30.0
_OBSERVER: Final = RpcListenerObserver()


class _AccessTokenRefused(Exception):
    """The Connect API answered 401 ("Token is not active") to the access token."""


class DiUpstream:
    """``GarminUpstream`` with Garmin's DI OAuth2 sign-in."""

    def __init__(
        self, upstream: UpstreamSettings, settings: DiSettings, *, clock: Clock | None = None
    ) -> None:
        self._upstream = upstream
        self._settings = settings
        self._clock = clock or SystemClock()
        self._tokens = TokenEndpoint(upstream, settings, self._clock, _OBSERVER)
        self._sso = SsoLogin(
            SsoHttp(
                upstream,
                impersonate=settings.impersonate,
                plain_http=settings.plain_http,
                observer=_OBSERVER,
            ),
            settings.service_url,
            self._clock,
        )

    def login(self, email: str, password: str) -> LoginResult:
        outcome = self._sso.login(email, password)
        if isinstance(outcome, PendingMfa):
            return LoginNeedsMfa(outcome)
        return LoginSucceeded(self._exchange_own(outcome, self._settings.service_url))

    def resume_mfa(self, pending: PendingMfa, code: str) -> GarminTokens:
        ticket = self._sso.verify_mfa(pending, code)
        service_url = pending.login_params.get("service", self._settings.service_url)
        try:
            return self._exchange_own(ticket, service_url)
        except UpstreamError as failed:
            # Garmin has spent the pending login here: the challenge is over (the caller
            # drops it rather than send the accepted code again).
            failed.pending_login_spent = True
            raise

    def _exchange_own(self, ticket: str, service_url: str) -> GarminTokens:
        """Exchange a ticket our own sign-in just got. SERVICE_TICKET_REJECTED is the answer
        about ExchangeServiceTicket's ticket, the caller's: a Login or SubmitMfa caller gave
        none and can fix none. Garmin refusing the ticket it has just issued (it expired on
        the way, or its service-URL binding changed) is Garmin unavailable: try later."""
        try:
            return self.exchange_service_ticket(ticket, service_url)
        except ServiceTicketRejected:
            log.warning("Garmin refused the service ticket its own sign-in had just issued")
            raise GarminUnavailable(
                "Garmin refused the service ticket its sign-in had just issued; try again later"
            ) from None

    def exchange_service_ticket(self, ticket: str, service_url: str) -> GarminTokens:
        """The ticket's token pair, with the configured client ids in order; what a refused id
        leads to is GARMIN_AUTH_DI_ON_REFUSED_CLIENT_ID's choice."""
        refused = GarminUnavailable(
            "Garmin refused the configured DI client id: check GARMIN_AUTH_DI_CLIENT_IDS"
        )
        for attempt, client_id in enumerate(self._settings.client_ids):
            try:
                return self._tokens.exchange_ticket(ticket, service_url, client_id, DEFAULT_DOMAIN)
            except ClientIdRefused:
                pass
            except ServiceTicketRejected:
                if attempt == 0:
                    raise
                # Whether a refused client id burns the ticket is uncertain (the facts file):
                # where it does, the next id finds the ticket spent by our own refused id, and
                # the user's ticket is not to blame.
                raise refused from None
            log.error("Garmin refused the DI client id %s for a ticket exchange", client_id)
            if self._settings.on_refused_client_id is RefusedClientId.STOP:
                break
        raise refused

    def refresh(self, tokens: GarminTokens) -> GarminTokens:
        return self._tokens.refresh(tokens)

    def validate(self, tokens: GarminTokens, *, allow_refresh: bool) -> GarminTokens:
        current = tokens
        if allow_refresh and self._expiring(tokens):
            current = self.refresh(tokens)
            if self._without_access(current):
                return current
        try:
            self._fetch_profile(current)
        except _AccessTokenRefused:
            if not allow_refresh or current is not tokens:
                raise GarminSessionRejected(
                    "Garmin refused the session (HTTP 401 on the Connect API)"
                ) from None
            # An access token we believed valid was refused (revoked, clock skew): only a
            # refused refresh proves the session itself dead.
            current = self.refresh(tokens)
            if self._without_access(current):
                return current
            try:
                self._fetch_profile(current)
            except _AccessTokenRefused:
                raise GarminSessionRejected(
                    "Garmin refused a freshly refreshed token (HTTP 401 on the Connect API)"
                ) from None
        return current

    def _without_access(self, refreshed: GarminTokens) -> bool:
        """A rotation whose answer carried no access token we could read (token_endpoint):
        Garmin accepting the refresh is its word that the session lives, and the caller must
        store the new refresh token; a 401 to the old access token would read as a dead one."""
        return refreshed.oauth2.expires_at <= self._clock.now()

    def _expiring(self, tokens: GarminTokens) -> bool:
        remaining = tokens.oauth2.expires_at - self._clock.now()
        return remaining.total_seconds() <= EXPIRY_MARGIN_SECONDS

    def _fetch_profile(self, tokens: GarminTokens) -> None:
        # The worker's Connect API client: bearer, the app's headers, the one transport.
        # Retry-After dates on the service's clock, the one its cooldowns are kept on. The
        # whole GET, its body included, within its retry budget: an answer trickling in would
        # hold the RPC's thread past the account's exclusive claim, and every next
        # GetStatus(validate) another thread.
        budget = RetryPolicy.of(self._upstream).budget_seconds
        with ConnectApi(
            self._upstream, tokens.domain, _OBSERVER, now=self._clock.now, call_seconds=budget
        ) as api:
            try:
                profile = api.get_json(PROFILE_PATH, tokens.oauth2.access_token)
            except AccessTokenRejected:
                raise _AccessTokenRefused from None
            except GarminError as error:
                raise as_domain(error, GarminEndpoint.CONNECT_API) from None
        if not isinstance(profile, dict):
            raise GarminUnavailable("Garmin answered something unreadable (Connect API)")
