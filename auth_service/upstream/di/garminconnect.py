"""python-garminconnect's ``garmin_tokens.json`` (``di_token``, ``di_refresh_token``,
``di_client_id``) to our tokens: what ImportSession accepts from its users.

The file stores no expiry: the access expiry is the JWT's ``exp``; the refresh expiry is
unknown (None) until the service's first refresh learns it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Final

from auth_service.domain.jwt_payload import di_issuer_domain, jwt_payload
from auth_service.domain.models import GarminTokens, OAuth2Token
from auth_service.domain.validation import is_credential
from garmin_client.endpoints import DEFAULT_DOMAIN

_CLIENT_ID: Final = re.compile(r"[A-Z0-9_]{1,128}")


def _text(data: dict[str, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"garmin_tokens.json: {name} is missing or not a string")
    if not is_credential(value):
        raise ValueError(f"garmin_tokens.json: {name} is malformed")
    return value


def _scope(claim: object) -> str:
    """The JWT's ``scope`` claim as one space-separated text: Garmin's DI tokens carry a list
    of scope names; a text is taken as it is, and no claim as no scope."""
    if claim is None:
        return ""
    if isinstance(claim, str):
        return claim
    if isinstance(claim, list) and all(isinstance(name, str) for name in claim):
        return " ".join(claim)
    raise ValueError("garmin_tokens.json: di_token's scope is neither text nor a list of texts")


def di_scope_problem(access_token: str) -> str | None:
    """Why a DI access token's ``scope`` claim is none Garmin issues (None when it is fine,
    absent, or the token is no JWT, which di_pair_problem tells). Quotes nothing."""
    try:
        claims = jwt_payload(access_token)
    except ValueError:
        return None
    try:
        _scope(claims.get("scope"))
    except ValueError:
        return "the access token's scope claim is neither text nor a list of texts"
    return None


def di_pair_problem(access_token: str, client_id: str) -> str | None:
    """Why a DI access token and the client id it is said to belong to cannot be a pair that
    refreshes (None when they can): the client id is malformed, the token is not a JWT with an
    expiry, or the JWT was issued to another client id. Quotes neither."""
    if not _CLIENT_ID.fullmatch(client_id):
        return "must be a DI client id (A-Z, 0-9 and _)"
    try:
        claims = jwt_payload(access_token)
    except ValueError as exc:
        return f"the access token is no DI access token: {exc}"
    if claims.get("client_id") not in (None, client_id):
        return "the access token was issued to another client id"
    return None


def tokens_from_garminconnect(text: str) -> GarminTokens:
    """Parse the file's JSON. Raises ValueError, never quoting the input, on anything
    malformed: not JSON, a field missing, an access token that is not a JWT with ``exp``, a
    JWT issued to another client id than the file names, or one whose scope is no text.

    The file names no token type: the one stored is Garmin's "bearer", what it always is."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("garmin_tokens.json: not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("garmin_tokens.json: expected a JSON object")  # noqa: TRY004 (input)
    access_token = _text(data, "di_token")
    refresh_token = _text(data, "di_refresh_token")
    client_id = _text(data, "di_client_id")
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError("garmin_tokens.json: di_client_id is malformed")
    try:
        claims = jwt_payload(access_token)
    except ValueError as exc:
        raise ValueError(f"garmin_tokens.json: di_token: {exc}") from None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int):
        raise ValueError("garmin_tokens.json: di_token has no expiry (exp)")  # noqa: TRY004
    try:
        expires_at = datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError("garmin_tokens.json: di_token's expiry is out of range") from None
    if claims.get("client_id") not in (None, client_id):
        raise ValueError("garmin_tokens.json: di_token was issued to another client id")
    jti = claims.get("jti")
    return GarminTokens(
        oauth1=None,
        oauth2=OAuth2Token(
            scope=_scope(claims.get("scope")),
            jti=jti if isinstance(jti, str) else "",
            token_type="bearer",  # noqa: S106 (a token type)
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=expires_at,
            refresh_token_expires_at=None,
        ),
        # garmin.cn accounts get their tokens from diauth.garmin.cn and must refresh there.
        domain=di_issuer_domain(access_token) or DEFAULT_DOMAIN,
        di_client_id=client_id,
    )
