"""The ``GarminUpstream`` the composition root wires in: each call goes to the provider it
belongs to. New logins take GARMIN_AUTH_LOGIN_FLOW's sign-in (DI unless set to garth); an
MFA login finishes with the sign-in that started it; a session is refreshed and validated by
the sign-in that issued it (``tokens.kind``); service tickets are DI's."""

from __future__ import annotations

from auth_service.domain.models import GarminTokens, LoginResult, PendingMfa, SessionKind
from auth_service.domain.policies import LoginFlow
from auth_service.upstream.di.provider import DiUpstream
from auth_service.upstream.garth.provider import GarthUpstream


class UpstreamRouter:
    """``GarminUpstream`` over both providers."""

    def __init__(self, *, garth: GarthUpstream, di: DiUpstream, login_flow: LoginFlow) -> None:
        self._garth = garth
        self._di = di
        self._login_flow = login_flow

    def login(self, email: str, password: str) -> LoginResult:
        if self._login_flow is LoginFlow.GARTH:
            return self._garth.login(email, password)
        return self._di.login(email, password)

    def resume_mfa(self, pending: PendingMfa, code: str) -> GarminTokens:
        if pending.flow is SessionKind.DI_OAUTH2:
            return self._di.resume_mfa(pending, code)
        return self._garth.resume_mfa(pending, code)

    def exchange_service_ticket(self, ticket: str, service_url: str) -> GarminTokens:
        return self._di.exchange_service_ticket(ticket, service_url)

    def refresh(self, tokens: GarminTokens) -> GarminTokens:
        if tokens.kind is SessionKind.DI_OAUTH2:
            return self._di.refresh(tokens)
        return self._garth.refresh(tokens)

    def validate(self, tokens: GarminTokens, *, allow_refresh: bool) -> GarminTokens:
        if tokens.kind is SessionKind.DI_OAUTH2:
            return self._di.validate(tokens, allow_refresh=allow_refresh)
        return self._garth.validate(tokens, allow_refresh=allow_refresh)
