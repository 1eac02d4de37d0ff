"""The Connect API clients of one sync thread, kept from one user to the next.

A client per user cost a requests session (its adapter, pool and environment reading) and a
new connection to Garmin for every user, which in production is a TCP and a TLS handshake per
user. A thread keeps one client per Garmin domain instead; what a user's requests carry (the
bearer) is per request, and the one thing a session remembers between requests, the cookies
Garmin set, is dropped before the next user's sync, so nothing of one user reaches another's
requests.
"""

from __future__ import annotations

from garmin_client.connect_api import ConnectApi
from garmin_client.settings import UpstreamSettings


class ConnectApis:
    """One ConnectApi per Garmin domain, for one thread's users in turn. Not thread-safe."""

    def __init__(self, upstream: UpstreamSettings) -> None:
        self._upstream = upstream
        self._by_domain: dict[str, ConnectApi] = {}

    def __enter__(self) -> ConnectApis:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def for_user(self, domain: str) -> ConnectApi:
        """The domain's client, with no cookie from an earlier user."""
        api = self._by_domain.get(domain)
        if api is None:
            api = self._by_domain[domain] = ConnectApi(self._upstream, domain)
        else:
            api.forget_cookies()
        return api

    def close(self) -> None:
        for api in self._by_domain.values():
            api.close()
        self._by_domain.clear()
