"""The DI access token's JWT shape: base64url header.payload.signature, signed with HS256 by
the emulator's own key so it can tell its tokens from forged or altered ones. (Garmin signs
with its own key; clients only ever read the payload.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(signing_input: str, key: bytes) -> str:
    return _b64url(hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest())


def encode(payload: dict[str, Any], key: bytes) -> str:
    """A signed JWT carrying `payload`."""
    header = _b64url(json.dumps(_HEADER, separators=(",", ":")).encode())
    body = _b64url(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}"
    return f"{signing_input}.{_signature(signing_input, key)}"


def signature_part(token: str) -> str:
    """The token's last segment (unique to it, so the log scans look for it too)."""
    return token.rsplit(".", 1)[-1]


def verified_payload(token: str, key: bytes) -> dict[str, Any] | None:
    """The payload of a token this key signed; None for anything else (expiry not checked)."""
    parts = token.split(".")
    if len(parts) != 3:  # noqa: PLR2004 (header, payload, signature)
        return None
    signing_input = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_signature(signing_input, key), parts[2]):
        return None
    try:
        payload = json.loads(_unb64url(parts[1]))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
