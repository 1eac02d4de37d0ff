"""``GarminUpstream`` with garth: login and MFA (auth_service.upstream.garth.sso), the OAuth1
-> OAuth2 exchange (whose 401 ends the session only when it cannot be Garmin refusing our
consumer or clock: auth_service.upstream.garth.exchange_refusals), and validation against the
Connect API.

One isolated garth client per call (``isolation``), so it is thread-safe. Raises
only the domain's ``UpstreamError`` subclasses, with messages that never contain a token,
password, cookie or ticket. Every request to Garmin is counted by the listener of the RPC in
progress (auth_service.upstream.observer), if any.
"""

from __future__ import annotations

import contextlib
from typing import Final

from auth_service.domain.clock import Clock, SystemClock
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.models import LoginResult, LoginSucceeded, PendingMfa
from auth_service.upstream.errors import domain_errors
from auth_service.upstream.garth.exchange_refusals import ExchangeRecord, record_of
from auth_service.upstream.garth.isolation import (
    GARTH_FAILURES,
    IsolatedClient,
    client_for_call,
    garth,
)
from auth_service.upstream.garth.sso import resume, sign_in
from auth_service.upstream.garth.tokens import bearer, oauth1_to_garth, oauth2_from_garth
from auth_service.upstream.observer import RpcListenerObserver
from garmin_client.answers import classify, failure, log_failure
from garmin_client.endpoints import DEFAULT_DOMAIN, PROFILE_PATH
from garmin_client.errors import (
    AccessTokenRejected,
    GarminError,
    RefusalInDoubt,
    SessionRejected,
    Unavailable,
)
from garmin_client.settings import UpstreamSettings
from garmin_client.tokens import GarminTokens, OAuth2Token

# validate() refreshes an access token this close to its expiry, so it does not lapse mid-call.
EXPIRY_MARGIN_SECONDS: Final = 30.0


_OBSERVER: Final = RpcListenerObserver()


class GarthUpstream:
    """``GarminUpstream`` with garth."""

    def __init__(self, settings: UpstreamSettings, *, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()

    @property
    def settings(self) -> UpstreamSettings:
        return self._settings

    def _client(self, domain: str) -> contextlib.AbstractContextManager[IsolatedClient]:
        return client_for_call(self._settings, domain, _OBSERVER)

    def login(self, email: str, password: str) -> LoginResult:
        with domain_errors(), self._client(DEFAULT_DOMAIN) as client:
            result = sign_in(client, email, password, self._clock.now())
        if isinstance(result, LoginSucceeded):
            # Signed in through an exchange: Garmin accepts our consumer (and clock).
            self._exchanges(result.tokens.domain).accepted()
        return result

    def resume_mfa(self, pending: PendingMfa, code: str) -> GarminTokens:
        with domain_errors(), self._client(pending.domain) as client:
            tokens = resume(client, pending, code, self._clock.now())
        self._exchanges(tokens.domain).accepted()
        return tokens

    def refresh(self, tokens: GarminTokens) -> GarminTokens:
        with domain_errors(GarminEndpoint.OAUTH_EXCHANGE):
            return self._refresh(tokens)

    def validate(self, tokens: GarminTokens, *, allow_refresh: bool) -> GarminTokens:
        # A 429 of the exchange inside (allow_refresh) counts against the Connect API too:
        # callers that let it refresh here never do in the service (RefreshLease does).
        with domain_errors(GarminEndpoint.CONNECT_API):
            return self._validate(tokens, allow_refresh=allow_refresh)

    def _refresh(self, tokens: GarminTokens) -> GarminTokens:
        # The exchange is done here rather than through Client.refresh_oauth2, so the result
        # is built from the OAuth1 we were given and the OAuth2 Garmin just issued.
        with self._client(tokens.domain) as client:
            issued_at = self._clock.now()  # before the exchange: never later than Garmin's
            try:
                fresh = garth.sso.exchange(
                    oauth1_to_garth(tokens.oauth1_token(), tokens.domain), client
                )
                oauth2 = oauth2_from_garth(fresh, issued_at)
            except GARTH_FAILURES as exc:
                now = self._clock.now()
                error = self._judged(classify(exc, judging_tokens=True, now=now), tokens)
                log_failure("token refresh", error, exc, routine=False)
                raise error from None
        self._exchanges(tokens.domain).accepted()
        return GarminTokens(oauth1=tokens.oauth1, oauth2=oauth2, domain=tokens.domain)

    def _exchanges(self, domain: str) -> ExchangeRecord:
        consumer = self._settings
        return record_of(consumer.consumer_key, consumer.consumer_secret, domain)

    def _judged(self, error: GarminError, tokens: GarminTokens) -> GarminError:
        """`error`, unless it is a 401 on the exchange that may be Garmin refusing our
        consumer or clock rather than the session (exchange_refusals): then try later."""
        if type(error) is not SessionRejected:  # AccessTokenRejected: the API's, not ours
            return error
        if self._exchanges(tokens.domain).refused(tokens.oauth1_token().oauth_token):
            return error
        return RefusalInDoubt(
            "Garmin refused the token exchange (HTTP 401) while it may be refusing our OAuth "
            "consumer or clock, not the session: the session is kept, try later"
        )

    def _validate(self, tokens: GarminTokens, *, allow_refresh: bool) -> GarminTokens:
        current = tokens
        if allow_refresh and self._expiring(tokens.oauth2):
            current = self._refresh(tokens)
        try:
            self._fetch_profile(current)
        except AccessTokenRejected:
            if not allow_refresh or current is not tokens:
                raise
            # Garmin refused an access token we believed valid (revoked, clock skew): only a
            # refused exchange proves the session itself dead.
            current = self._refresh(tokens)
            self._fetch_profile(current)
        return current

    def _expiring(self, token: OAuth2Token) -> bool:
        return (token.expires_at - self._clock.now()).total_seconds() <= EXPIRY_MARGIN_SECONDS

    def _fetch_profile(self, tokens: GarminTokens) -> None:
        # api=False with our own Authorization: with api=True garth would refresh an expired
        # token on its own, which validate(allow_refresh=False) must never do.
        with self._client(tokens.domain) as client:
            try:
                response = client.request(
                    "GET",
                    "connectapi",
                    PROFILE_PATH,
                    api=False,
                    headers={"Authorization": bearer(tokens.oauth2)},
                )
                profile = response.json()
            except GARTH_FAILURES as exc:
                now = self._clock.now()
                raise failure("validation", exc, judging_tokens=True, now=now) from None
        if not isinstance(profile, dict):
            raise Unavailable("Garmin answered something unreadable (Connect API)")
