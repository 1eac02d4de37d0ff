"""Garmin calls under a lease: the lease's access token, and one RefreshLease when Garmin
refuses it.

The worker holds nothing but an access token (issue 13): when Garmin answers 401, or the token
has expired, it asks the service for a fresh one (RefreshLease, carrying the session version
its token came with, so many holders' requests cause one refresh at Garmin) and repeats the
call once. A 401 on a token the service has just issued is a definite rejection: the sync
reports the session invalidated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from garmin_client.connect_api import ConnectApi
from garmin_client.errors import AccessTokenRejected, RateLimited, SessionRejected, Unavailable
from sync_worker.client import AuthClient
from sync_worker.client_errors import (
    GARMIN_RATE_LIMITED,
    GARMIN_UNAVAILABLE,
    SESSION_NOT_ACTIVE,
    AuthServiceError,
)
from sync_worker.keeper import LeaseGone
from sync_worker.lease_grants import AccessToken

log = logging.getLogger(__name__)

T = TypeVar("T")


class ServiceRateLimited(RateLimited):
    """The service's refresh for the lease met Garmin's 429, or waits out one: the service
    holds the account back by itself, so the release reports no 429. `only_this_account`:
    the wait is this account's cooldown (ErrorInfo scope=user), not Garmin's word on every
    account, so the run goes on with the others."""

    def __init__(
        self, message: str, retry_after_seconds: float | None, *, only_this_account: bool
    ) -> None:
        super().__init__(message, retry_after_seconds)
        self.only_this_account = only_this_account


class SessionEndedByService(Exception):
    """The service's refresh found the session dead: it is AUTH_EXPIRED already and the lease
    is over, so there is nothing left to report."""


class SessionInDoubt(Unavailable):
    """The service's refresh found Garmin refusing this one session in doubt (GARMIN_UNAVAILABLE
    with scope=user: a garth exchange answered 401 while Garmin may be refusing the service's
    OAuth consumer rather than the session). The user failed, as for any Unavailable, but
    Garmin is not down: the run counts no outage for it."""


class LeasedApi:
    """Connect API GETs as the leased user. Not thread-safe: one per user's sync."""

    def __init__(
        self,
        api: ConnectApi,
        client: AuthClient,
        lease_id: str,
        access: AccessToken,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = api
        self._client = client
        self._lease_id = lease_id
        self._access = access
        self._now = now
        # How many fresh tokens the service handed out during the sync.
        self.refreshes = 0

    @property
    def session_version(self) -> int:
        """The version of the session whose access token the sync uses now."""
        return self._access.session_version

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._call(lambda token: self._api.get_json(path, token, params))

    def download(self, path: str) -> bytes:
        return self._call(lambda token: self._api.download(path, token))

    def _call(self, send: Callable[[str], T]) -> T:
        fresh = False
        if self._access.expires_at <= self._now():
            # Certain to be refused: do not spend a request at Garmin on it.
            self._refresh()
            fresh = True
        try:
            return send(self._access.token)
        except AccessTokenRejected:
            if fresh:
                raise _definite() from None
        self._refresh()
        try:
            return send(self._access.token)
        except AccessTokenRejected:
            raise _definite() from None

    def _refresh(self) -> None:
        try:
            self._access = self._client.refresh_lease(self._lease_id, self._access.session_version)
        except AuthServiceError as exc:
            raise _meaning(exc) from None
        self.refreshes += 1
        log.debug(
            "fresh access token from RefreshLease (session version %d)",
            self._access.session_version,
        )


def _definite() -> SessionRejected:
    return SessionRejected("Garmin refused a freshly issued access token (HTTP 401)")


def _meaning(exc: AuthServiceError) -> Exception:
    """What a failed RefreshLease means to the sync."""
    if exc.lease_lost:
        return LeaseGone("RefreshLease answered LEASE_LOST")
    if exc.reason == SESSION_NOT_ACTIVE:
        return SessionEndedByService("the service found the session rejected when refreshing")
    if exc.reason == GARMIN_RATE_LIMITED:
        return ServiceRateLimited(
            "Garmin is rate limiting the service's refresh",
            exc.retry_after,
            only_this_account=exc.about_user,
        )
    if exc.reason == GARMIN_UNAVAILABLE or exc.waited_for_garmin:
        return _unavailable(exc)
    return exc


def _unavailable(exc: AuthServiceError) -> Unavailable:
    if exc.reason != GARMIN_UNAVAILABLE:
        return Unavailable("the service's refresh did not answer within the call's deadline")
    if exc.about_user:
        return SessionInDoubt("Garmin refused the service's refresh of this session, in doubt")
    return Unavailable("Garmin was unavailable for the service's refresh")
