"""The Connect API clients of one sync thread, kept from one user to the next.

A client per user cost a requests session (its adapter, pool and environment reading) and a
new connection to Garmin for every user, which in production is a TCP and a TLS handshake per
user. A thread keeps one client per Garmin domain instead; what a user's requests carry (the
bearer) is per request, and the one thing a session remembers between requests, the cookies
Garmin set, is dropped before the next user's sync, so nothing of one user reaches another's
requests.

Each client bounds a whole GET (GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT) and cuts it when the run is
interrupted (SIGTERM, Garmin given up on, the auth service gone): an answer that trickles in
must hold neither the thread, nor the user's lease, nor a stopping run.
"""

from __future__ import annotations

import threading

from garmin_client.connect_api import ConnectApi
from garmin_client.settings import UpstreamSettings


class ConnectApis:
    """One ConnectApi per Garmin domain, for one thread's users in turn. Not thread-safe."""

    def __init__(
        self,
        upstream: UpstreamSettings,
        *,
        call_seconds: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self._upstream = upstream
        self._call_seconds = call_seconds
        self._cancel = cancel
        self._by_domain: dict[str, ConnectApi] = {}

    def __enter__(self) -> ConnectApis:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def for_user(self, domain: str) -> ConnectApi:
        """The domain's client, with no cookie from an earlier user."""
        api = self._by_domain.get(domain)
        if api is None:
            api = self._by_domain[domain] = ConnectApi(
                self._upstream, domain, call_seconds=self._call_seconds, cancel=self._cancel
            )
        else:
            api.forget_cookies()
        return api

    def close(self) -> None:
        for api in self._by_domain.values():
            api.close()
        self._by_domain.clear()
