"""What an answer of Garmin's SSO (the mobile JSON sign-in, which both providers use) says
about what we sent: the rules both providers' sign-in modules apply.

A refusal is told by the answer's JSON type, never by its HTTP status alone: Garmin's edge puts
captchas and HTML pages on any status, and those refuse nobody's password or code (shared
facts file: CAPTCHA_REQUIRED, HTML pages, 403 and 429 mean "blocked, try later").
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

# SSO answer types that mean "blocked, try later", not a refusal of the password or code.
BLOCKED_SSO_TYPES = frozenset({"CAPTCHA_REQUIRED"})
# The answer types that accept what we sent. Any other type Garmin's sign-in judges with is a
# refusal: the facts file names INVALID_USERNAME_PASSWORD for the login and no source names the
# MFA step's, and a refusal answered "try later" would have the user retry for ever.
ACCEPTING_SSO_TYPES = frozenset({"SUCCESSFUL", "MFA_REQUIRED"})

_SHOWABLE_TYPE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def sso_type(payload: object) -> str | None:
    """The answer's `responseStatus.type` (None: not JSON of that shape)."""
    status = payload.get("responseStatus") if isinstance(payload, dict) else None
    kind = status.get("type") if isinstance(status, dict) else None
    return kind if isinstance(kind, str) and kind else None


def sso_refusal(status: int, kind: str | None) -> str | None:
    """The answer's type when it is Garmin's sign-in refusing what we sent: a type, neither an
    accepting nor a blocked one, on none of the statuses Garmin's edge blocks or fails with
    (403, 429, 5xx). None otherwise: whatever else the answer says, nothing was refused."""
    blocked = status in (HTTPStatus.FORBIDDEN, HTTPStatus.TOO_MANY_REQUESTS)
    if blocked or status >= HTTPStatus.INTERNAL_SERVER_ERROR or kind is None:
        return None
    if kind in BLOCKED_SSO_TYPES or kind in ACCEPTING_SSO_TYPES:
        return None
    return kind


def shown(kind: str) -> str:
    """A type as it may appear in a message or log line (Garmin's text is never echoed)."""
    return kind if _SHOWABLE_TYPE.fullmatch(kind) else "unexpected type"
