"""Providers of the domain's ``GarminUpstream`` port (auth_service.domain.ports): the ways the
service signs in to Garmin and keeps a session alive.

* ``di/``: Garmin's current DI OAuth2 sign-in (new logins, service tickets, rotating refresh
  tokens).
* ``garth/``: Garmin's legacy SSO login (with MFA) and the OAuth1 -> OAuth2 exchange, through
  garth 0.8.0 (isolated by ``garth/isolation``); existing sessions keep working on it.
* ``router``: the port over both, as the composition root (auth_service.server) wires it.
* ``observer``: how every provider's requests reach the service's metrics.
* ``errors``: the one translation of garmin_client's errors into the domain's.

A further provider goes in its own folder, implements the same port, raises the domain's
``UpstreamError`` subclasses, passes ``observer.RpcListenerObserver`` to garmin_client's
transport, and gets its place in the router. What providers share with the sync worker (HTTP
transport, retries, Garmin's answers as errors) lives in garmin_client.
"""
