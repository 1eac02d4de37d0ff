"""The garth provider of ``GarminUpstream``: login and MFA over Garmin's SSO (``sso``), the
OAuth1 -> OAuth2 exchange and validation (``provider``), garth's ``Client.dumps()`` strings
(``dumps``); garmin_client's errors become domain errors in ``auth_service.upstream.errors``,
shared with the DI provider. garth itself is imported only by ``isolation`` (garth defused: no
environment, no files, no telemetry, our transport); ``tokens`` converts our token values to
garth's and back. Only the service uses garth: the sync worker holds access tokens alone.
"""
