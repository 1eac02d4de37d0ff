"""The DI OAuth2 provider of ``GarminUpstream`` (Garmin's current sign-in, used by its mobile
apps): the mobile JSON login and MFA over a browser-like TLS handshake (``sso``,
``sso_http``), the service-ticket exchange and rotating refreshes at diauth (``token_endpoint``),
validation and the port itself (``provider``), python-garminconnect's token file
(``garminconnect``); the JWT payload reader is the domain's (``domain.jwt_payload``). Its
settings are auth_service.domain.policies.DiSettings (GARMIN_AUTH_DI_*).
"""
