"""The payload of a DI access token (a JWT): what clients read from it (``exp``,
``client_id``, ``iss``) and whose account it is (``garminGuid``). The signature is Garmin's to
check, not ours."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from garmin_client.endpoints import DOMAINS

_JWT_PARTS: Final = 3
_DIAUTH: Final = "https://diauth."


def jwt_payload(token: str) -> dict[str, Any]:
    """The JWT's middle part as a JSON object; ValueError (quoting nothing) otherwise."""
    parts = token.split(".")
    if len(parts) != _JWT_PARTS or not all(parts):
        raise ValueError("not a JWT (header.payload.signature)")
    part = parts[1]
    try:
        payload = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("the JWT's payload is not base64url JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("the JWT's payload is not a JSON object")  # noqa: TRY004 (input)
    return payload


def _claim(access_token: str, name: str) -> object:
    """One claim of a JWT's payload (None: absent, or the token is no JWT)."""
    try:
        return jwt_payload(access_token).get(name)
    except ValueError:
        return None


def di_account(access_token: str) -> str | None:
    """The Garmin account a DI access token was issued for (its ``garminGuid`` claim), None
    when the token does not say."""
    account = _claim(access_token, "garminGuid")
    return account if isinstance(account, str) and account else None


def di_issuer_domain(access_token: str) -> str | None:
    """The Garmin domain whose diauth issued a DI access token (its ``iss`` claim,
    ``https://diauth.<domain>``; garmin.cn accounts' tokens come from diauth.garmin.cn and
    refresh only there), None when the token does not name one of Garmin's domains."""
    issuer = _claim(access_token, "iss")
    if not isinstance(issuer, str) or not issuer.startswith(_DIAUTH):
        return None
    domain = issuer.removeprefix(_DIAUTH).rstrip("/")
    return domain if domain in DOMAINS else None


def di_issued_at(access_token: str) -> int | None:
    """When a DI access token was issued (its ``iat`` claim, seconds since the epoch), None
    when the token does not say."""
    issued = _claim(access_token, "iat")
    return issued if isinstance(issued, int) and not isinstance(issued, bool) else None
