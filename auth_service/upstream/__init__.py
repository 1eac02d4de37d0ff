"""Providers of the domain's ``GarminUpstream`` port (auth_service.domain.ports): the ways the
service signs in to Garmin and keeps a session alive.

* ``garth/``: Garmin's SSO login (with MFA) and the OAuth1 -> OAuth2 exchange, through garth
  0.8.0 (isolated by garmin_client.isolation).
* ``observer``: how every provider's requests reach the service's metrics.

A second provider (Garmin's current DI OAuth2 sign-in) goes in its own folder beside
``garth/``, implements the same port, raises the domain's ``UpstreamError`` subclasses, passes
``observer.RpcListenerObserver`` to garmin_client's transport, and is chosen in the
composition root (auth_service.server). What providers share with the sync worker (HTTP
transport, retries, Garmin's answers as errors) lives in garmin_client.
"""
