"""diauth.garmin.com's DI OAuth2 token endpoint (diauth.garmin.cn serves garmin.cn accounts):
a service ticket becomes a token pair, and a refresh token becomes a new pair, killing the old
refresh token (rotation). Clients authenticate with HTTP Basic "<client_id>:" (no secret) and
a refresh token only works for the client id it was issued to. Access tokens are JWTs naming
the diauth host that issued them (``iss``); a refresh token only works at that host, which
the emulator tells by the host the request was meant for (X-Forwarded-Host)."""

from __future__ import annotations

import base64
import binascii
import secrets
import time
import uuid
from typing import Any

from garmin_emulator import jwt
from garmin_emulator.options import DEFAULT_DI_DOMAIN, DI_DOMAINS, DiOptions
from garmin_emulator.state import (
    LIVE,
    REVOKED,
    ROTATED,
    AccessGrant,
    DiRefreshToken,
    EmulatorState,
    TokenRequest,
    bump,
)
from garmin_emulator.wire import BadRequest, Incoming, Reply, json_reply

SERVICE_TICKET_GRANT = "https://connectapi.garmin.com/di-oauth2-service/oauth/grant/service_ticket"
REFRESH_TOKEN_GRANT = "refresh_token"  # noqa: S105 (a grant type, not a secret)
_DIAUTH_PREFIX = "diauth."
DI_SCOPE = (
    "COMMUNITY_COURSE_READ GARMINPAY_WRITE GOLF_API_READ ATP_READ GHS_SAMD GHS_UPLOAD "
    "INSIGHTS_READ CONNECT_READ CONNECT_WRITE"
)
INVALID_TICKET = "invalid service ticket provided"

# What one grant handler decided: the answer, whose ticket or token it was, and its outcome.
_Decision = tuple[Reply, str | None, str]


def _oauth_error(status: int, error: str, description: str) -> Reply:
    return json_reply(status, {"error": error, "error_description": description})


def _invalid_grant(email: str | None) -> _Decision:
    return (
        _oauth_error(400, "invalid_grant", "Invalid refresh token: the token is not active"),
        email,
        "invalid_grant",
    )


def _invalid_ticket(email: str | None, options: DiOptions) -> _Decision:
    reply = _oauth_error(
        options.invalid_ticket_status, options.invalid_ticket_error, INVALID_TICKET
    )
    return reply, email, "invalid_ticket"


def issuer(domain: str) -> str:
    """The ``iss`` of the access tokens diauth.<domain> issues."""
    return f"https://{_DIAUTH_PREFIX}{domain}"


def diauth_domain(host: str) -> str:
    """The Garmin domain whose diauth a token request was meant for: that of diauth.garmin.cn
    or diauth.garmin.com, and garmin.com for a direct caller naming no Garmin host."""
    domain = host.removeprefix(_DIAUTH_PREFIX)
    if host.startswith(_DIAUTH_PREFIX) and domain in DI_DOMAINS:
        return domain
    return DEFAULT_DI_DOMAIN


def _basic_client(request: Incoming) -> str | None:
    """The client id of an ``Authorization: Basic base64("<client_id>:")`` header."""
    scheme, _, encoded = (request.authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    return client_id if colon and not secret else None


class DiOAuth:
    """The DI token endpoint, over the shared state; signs access tokens with `key`."""

    def __init__(self, state: EmulatorState, options: DiOptions, key: bytes) -> None:
        self._state = state
        self._options = options
        self._key = key

    def token(self, request: Incoming) -> Reply:
        try:
            form = request.form()
        except BadRequest as exc:
            form = {}
            decision: _Decision = (
                _oauth_error(400, "invalid_request", str(exc)),
                None,
                "invalid_request",
            )
        else:
            decision = self._decide(request, form)
        reply, email, outcome = decision
        with self._state.lock:
            self._state.records.token_requests.append(
                TokenRequest(
                    host=request.host,
                    grant_type=form.get("grant_type", ""),
                    client_id=form.get("client_id", ""),
                    email=email,
                    status=reply.status,
                    outcome=outcome,
                    app_headers=request.app_headers,
                )
            )
        return reply

    def _decide(self, request: Incoming, form: dict[str, str]) -> _Decision:
        client_id = form.get("client_id", "")
        if not client_id or _basic_client(request) != client_id:
            reply = _oauth_error(401, "invalid_client", "Bad client credentials")
            return reply, None, "invalid_client"
        grant_type = form.get("grant_type", "")
        domain = diauth_domain(request.host)
        if grant_type == SERVICE_TICKET_GRANT:
            return self._exchange_ticket(form, client_id, domain)
        if grant_type == REFRESH_TOKEN_GRANT:
            return self._refresh(form, client_id, domain)
        reply = _oauth_error(400, "unsupported_grant_type", "Unsupported grant type")
        return reply, None, "invalid_request"

    def _exchange_ticket(self, form: dict[str, str], client_id: str, domain: str) -> _Decision:
        service_url = form.get("service_url", "")
        with self._state.lock:
            ticket = self._state.tickets.get(form.get("service_ticket", ""))
            email = ticket.email if ticket is not None else None
            if client_id not in self._options.accepted_client_ids:
                if ticket is not None and self._options.refused_client_burns_ticket:
                    ticket.used = True
                reply = _oauth_error(401, "invalid_client", "Unknown client")
                return reply, email, "invalid_client"
            if ticket is None or ticket.used or ticket.expires_at <= time.time():
                return _invalid_ticket(email, self._options)
            if ticket.service_url != service_url:
                if self._options.wrong_service_url_burns_ticket:
                    ticket.used = True
                return _invalid_ticket(email, self._options)
            ticket.used = True
            assert email is not None
            bump(self._state.records.ticket_exchanges, email)
            expires_at = time.time() + self._options.refresh_token_expires_in
            answer = self.issue(
                email, client_id, service_url, expires_at, family=None, domain=domain
            )
        return json_reply(200, answer), email, "issued"

    def _refresh(self, form: dict[str, str], client_id: str, domain: str) -> _Decision:
        state, options = self._state, self._options
        with state.lock:
            grant = state.di_refresh.get(form.get("refresh_token", ""))
            if grant is None or grant.domain != domain:
                # Each diauth knows only the refresh tokens it issued: another host's is as
                # unknown there as a made-up one (nothing rotates, dies or counts as a reuse).
                return _invalid_grant(None)
            if grant.client_id != client_id:
                # Refresh tokens are bound to their client id.
                return _invalid_grant(grant.email)
            if grant.status == ROTATED:
                bump(state.records.refresh_token_reuses, grant.email)
                if options.reuse_kills_newest:
                    newest = state.di_refresh[state.di_families[grant.family]]
                    if newest.status == LIVE:
                        newest.status = REVOKED
                return _invalid_grant(grant.email)
            if grant.status == REVOKED or grant.expires_at <= time.time():
                return _invalid_grant(grant.email)
            grant.status = ROTATED
            bump(state.records.di_refreshes, grant.email)
            expires_at = (
                time.time() + options.refresh_token_expires_in
                if options.rotation_restarts_refresh_expiry
                else grant.expires_at
            )
            answer = self.issue(
                grant.email,
                client_id,
                grant.service_url,
                expires_at,
                family=grant.family,
                domain=grant.domain,
            )
            if options.omit_refresh_expiry_on_refresh:
                answer.pop("refresh_token_expires_in", None)
        return json_reply(200, answer), grant.email, "issued"

    def issue(
        self,
        email: str,
        client_id: str,
        service_url: str,
        refresh_expires_at: float,
        *,
        family: int | None,
        domain: str,
    ) -> dict[str, Any]:
        """A new token pair for the user (a new family unless given), issued by
        diauth.<domain>: Garmin's answer.

        The caller holds the state's lock.
        """
        state = self._state
        user = state.users[email]
        issued_at = int(time.time())
        expires_in = self._options.access_token_expires_in
        jti = str(uuid.uuid4())
        access_token = jwt.encode(
            {
                "scope": DI_SCOPE.split(),
                "iss": issuer(domain),
                "exp": issued_at + expires_in,
                "iat": issued_at,
                "jti": jti,
                "client_id": client_id,
                "garminGuid": f"guid-{user.profile_id}",
            },
            self._key,
        )
        refresh_token = secrets.token_urlsafe(48)
        state.remember(access_token, jwt.signature_part(access_token), refresh_token)
        state.access[access_token] = AccessGrant(
            email=email,
            expires_at=issued_at + expires_in,
            client_id=client_id,
            service_url=service_url,
        )
        if family is None:
            family = next(state.ids)
        state.di_refresh[refresh_token] = DiRefreshToken(
            email=email,
            client_id=client_id,
            family=family,
            service_url=service_url,
            expires_at=refresh_expires_at,
            domain=domain,
        )
        state.di_families[family] = refresh_token
        answer: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "bearer",
            "refresh_token": refresh_token,
            "expires_in": expires_in,
            "refresh_token_expires_in": max(0, int(refresh_expires_at - time.time())),
            "scope": DI_SCOPE,
            "jti": jti,
        }
        for name, value in self._options.answer_overrides.items():
            if value is None:
                answer.pop(name, None)
            else:
                answer[name] = value
        return answer
