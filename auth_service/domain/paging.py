"""Keyset pagination with signed page tokens (ListSessions, ListAuditEvents).

A page token carries the position after which the next page starts and a fingerprint of the
request's filter, so it is only valid with the filter it was issued for. It is signed with
HMAC-SHA256, and the signature is checked before anything else: a forged or altered token is
refused (INVALID_ARGUMENT) and its position never reaches a query.

The signing keys are the same on every replica and secret (the composition root derives them
from the encryption keyring). The first key signs and every key verifies, so tokens handed out
before a key rotation keep working until the old key leaves the ring.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from auth_service.domain.errors import FieldViolation, InvalidArgument

MAX_PAGE_TOKEN_LENGTH = 1024
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
FIELD = "page_token"
_SEPARATOR = "."

Item = TypeVar("Item")
Position = TypeVar("Position")


def not_ours() -> InvalidArgument:
    return InvalidArgument([FieldViolation(FIELD, "is not a token this service issued")])


def check_page_size(page_size: int) -> list[FieldViolation]:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        return [FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")]
    return []


@dataclass(frozen=True)
class PageRequest(Generic[Position]):
    """Where a page starts (None: the first page) and how many items it shows."""

    after: Position | None
    limit: int

    @property
    def fetch(self) -> int:
        """Rows to read: one more than the page shows tells whether another page follows."""
        return self.limit + 1


class Pager:
    """Issues and reads the page tokens of every listing."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one signing key is required")
        self._keys = tuple(keys)

    def request(
        self,
        page_size: int,
        page_token: str,
        filter_fingerprint: object,
        parse: Callable[[dict[str, Any]], Position],
    ) -> PageRequest[Position]:
        """The page a request asks for. `parse` turns a token's verified position into the
        query's terms (raising ValueError, TypeError, KeyError or OverflowError if it
        cannot)."""
        position = self._read(page_token, filter_fingerprint)
        size = page_size or DEFAULT_PAGE_SIZE
        if position is None:
            return PageRequest(after=None, limit=size)
        try:
            return PageRequest(after=parse(position), limit=size)
        except (ValueError, TypeError, KeyError, OverflowError):
            raise not_ours() from None

    def page(
        self,
        rows: list[Item],
        request: PageRequest[Any],
        filter_fingerprint: object,
        position_of: Callable[[Item], dict[str, Any]],
    ) -> tuple[list[Item], str]:
        """The items to show and the token of the next page ("" when this is the last)."""
        items = rows[: request.limit]
        if len(rows) <= request.limit:
            return items, ""
        return items, self.issue(position_of(items[-1]), filter_fingerprint)

    def issue(self, position: dict[str, Any], filter_fingerprint: object) -> str:
        payload = json.dumps({"position": position, "filter": filter_fingerprint})
        body = base64.urlsafe_b64encode(payload.encode()).decode()
        return body + _SEPARATOR + self._sign(body, self._keys[0]).decode()

    def _read(self, token: str, filter_fingerprint: object) -> dict[str, Any] | None:
        """The position a token carries; None for the first page (no token)."""
        if not token:
            return None
        if len(token) > MAX_PAGE_TOKEN_LENGTH:
            raise not_ours()
        body, _, signature = token.partition(_SEPARATOR)
        # Compared as the text it was issued as: one signature has exactly one spelling.
        presented = signature.encode()
        if not any(hmac.compare_digest(presented, self._sign(body, k)) for k in self._keys):
            raise not_ours()
        try:
            payload = json.loads(base64.urlsafe_b64decode(body.encode()))
        except (binascii.Error, ValueError):
            raise not_ours() from None
        if not isinstance(payload, dict) or not isinstance(payload.get("position"), dict):
            raise not_ours()
        if payload.get("filter") != filter_fingerprint:
            raise InvalidArgument(
                [FieldViolation(FIELD, "was issued for a different filter or order")]
            )
        position: dict[str, Any] = payload["position"]
        return position

    @staticmethod
    def _sign(body: str, key: bytes) -> bytes:
        return base64.urlsafe_b64encode(hmac.new(key, body.encode(), hashlib.sha256).digest())
