"""One parsed request and one answer, as the emulator's endpoint handlers see them."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from oauthlib.oauth1.rfc5849 import utils as oauth_utils

# The headers Garmin's Android app sends with DI token and API calls.
APP_HEADERS = (
    "User-Agent",
    "X-Garmin-User-Agent",
    "X-Garmin-Paired-App-Version",
    "X-Garmin-Client-Platform",
    "X-App-Ver",
    "X-Lang",
    "X-GCExperience",
)
_APP_HEADERS_LOWER = {name.lower() for name in APP_HEADERS}


@dataclass
class Reply:
    """An answer to write: status, body, content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


class BadRequest(Exception):
    """The request is malformed: answered 400 with this message."""


def json_reply(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), headers=list(headers or []))


def error_reply(status: int, message: str) -> Reply:
    return json_reply(status, {"message": message, "error": HTTPStatus(status).phrase})


def html_reply(title: str) -> Reply:
    page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body></body></html>"
    return Reply(200, page.encode(), content_type="text/html;charset=UTF-8")


@dataclass
class Incoming:
    """One parsed request."""

    method: str
    path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes
    original_url: str
    cookies: dict[str, str]

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.raw_query, keep_blank_values=True))

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    @property
    def host(self) -> str:
        """The host the client meant (X-Forwarded-Host when routed here, else Host)."""
        return urlsplit(self.original_url).hostname or ""

    @property
    def app_headers(self) -> dict[str, str]:
        """The Garmin app headers (APP_HEADERS) the request carried, names as sent."""
        return {
            name: value
            for name, value in self.headers.items()
            if name.lower() in _APP_HEADERS_LOWER
        }

    def form(self) -> dict[str, str]:
        """The urlencoded form body (the last value of a repeated field)."""
        if "application/x-www-form-urlencoded" not in self.headers.get("Content-Type", ""):
            raise BadRequest("the body must be application/x-www-form-urlencoded")
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the body is not UTF-8") from None
        return dict(parse_qsl(text, keep_blank_values=True))

    def json_object(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not JSON") from None
        if not isinstance(value, dict):
            raise BadRequest("the body must be a JSON object")
        return value

    def oauth_params(self) -> dict[str, str]:
        header = self.authorization or ""
        if not header.startswith("OAuth "):
            return {}
        try:
            pairs = oauth_utils.parse_authorization_header(header)
            # Header values are percent-encoded (RFC 5849 3.5.1).
            return {name: oauth_utils.unescape(value) for name, value in pairs}
        except (ValueError, TypeError, IndexError):
            return {}

    def int_param(self, name: str, default: int, *, minimum: int) -> int:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        if not re.fullmatch(r"\d{1,9}", raw) or int(raw) < minimum:
            raise BadRequest(f"{name} must be a non-negative integer")
        return int(raw)

    def date_param(self, name: str) -> date | None:
        raw = self.query.get(name)
        if not raw:
            return None
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise BadRequest(f"{name} must be YYYY-MM-DD") from None
