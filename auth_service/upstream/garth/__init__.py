"""The garth provider of ``GarminUpstream``: login and MFA over Garmin's SSO (``sso``), the
OAuth1 -> OAuth2 exchange and validation (``provider``), garth's ``Client.dumps()`` strings
(``dumps``), and the one translation of garmin_client's errors into domain errors
(``errors``). garth itself is reached only through garmin_client.isolation.
"""
