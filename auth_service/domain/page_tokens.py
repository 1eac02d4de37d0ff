"""Opaque page tokens for keyset pagination (ListSessions, ListAuditEvents).

A token carries the position after which the next page starts and a fingerprint of the
request's filter, so a token is only valid with the filter it was issued for.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from auth_service.domain.errors import FieldViolation, InvalidArgument

MAX_PAGE_TOKEN_LENGTH = 1024
FIELD = "page_token"


def not_ours() -> InvalidArgument:
    return InvalidArgument([FieldViolation(FIELD, "is not a token this service issued")])


def encode_page_token(position: dict[str, Any], filter_fingerprint: object) -> str:
    payload = json.dumps({"position": position, "filter": filter_fingerprint})
    return base64.urlsafe_b64encode(payload.encode()).decode()


def decode_page_token(token: str, filter_fingerprint: object) -> dict[str, Any] | None:
    """The position a token carries; None for the first page (no token)."""
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise not_ours()
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise not_ours() from None
    if not isinstance(payload, dict) or not isinstance(payload.get("position"), dict):
        raise not_ours()
    if payload.get("filter") != filter_fingerprint:
        raise InvalidArgument([FieldViolation(FIELD, "was issued for a different filter or order")])
    position: dict[str, Any] = payload["position"]
    return position
