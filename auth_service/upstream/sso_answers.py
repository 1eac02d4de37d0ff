"""What an answer of Garmin's SSO (the mobile JSON sign-in, which both providers use) says
about what we sent: one verdict (judge) and the error it makes (verdict_error), which both
providers' sign-in modules apply, in this order:

1. 429 is rate limiting, whatever its body says (the service starts the sign-in cooldown), and
   so is a body saying 429 on any status ({"error": {"status-code": "429"}}, which
   python-garminconnect reads as "too many requests" on both steps).
2. A captcha type is Garmin's edge blocking this server: try later.
3. A refusal is told by the answer's JSON type, never by its HTTP status alone: Garmin's edge
   puts captchas and HTML pages on any status, and those refuse nobody's password or code
   (shared facts file: CAPTCHA_REQUIRED, HTML pages, 403 and 429 mean "blocked, try later").
   On the MFA step a refusal answered 401 means Garmin no longer holds the pending login.
4. Anything else (403, 5xx, HTML, an accepting type we cannot use) is unreadable: try later.
"""

from __future__ import annotations

import enum
import re
from http import HTTPStatus
from typing import Final

from auth_service.domain.errors import (
    GarminCredentialsRejected,
    GarminUnavailable,
    MfaChallengeNotFound,
    MfaCodeRejected,
)

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


def rate_limited_in_body(payload: object) -> bool:
    """Whether the answer's JSON says 429 in its `error.status-code`, whatever its status."""
    error = payload.get("error") if isinstance(payload, dict) else None
    code = error.get("status-code") if isinstance(error, dict) else None
    return str(code) == "429"


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


class SsoVerdict(enum.Enum):
    """What an SSO answer that is no success says."""

    RATE_LIMITED = "rate_limited"
    BLOCKED = "blocked"
    REFUSED = "refused"  # the password (login) or the code (MFA step)
    GONE = "gone"  # MFA step: Garmin no longer holds the pending login
    UNREADABLE = "unreadable"


def judge(status: int, payload: object, *, mfa_step: bool) -> SsoVerdict:
    """The verdict on an answer that is no success (`payload`: its JSON, None if not)."""
    kind = sso_type(payload)
    if status == HTTPStatus.TOO_MANY_REQUESTS or rate_limited_in_body(payload):
        return SsoVerdict.RATE_LIMITED
    if kind in BLOCKED_SSO_TYPES:
        return SsoVerdict.BLOCKED
    if sso_refusal(status, kind) is None:
        return SsoVerdict.UNREADABLE
    if mfa_step and status == HTTPStatus.UNAUTHORIZED:
        return SsoVerdict.GONE
    return SsoVerdict.REFUSED


SignInRefusal = (
    GarminCredentialsRejected | MfaCodeRejected | MfaChallengeNotFound | GarminUnavailable
)


def verdict_error(verdict: SsoVerdict, kind: str | None, *, mfa_step: bool) -> SignInRefusal | None:
    """The error of a BLOCKED, REFUSED or GONE verdict (None: RATE_LIMITED and UNREADABLE,
    which each provider words with what it knows of the answer: a Retry-After, a status)."""
    if verdict is SsoVerdict.BLOCKED:
        return GarminUnavailable(
            f"Garmin's sign-in is blocking this server for now ({shown(kind or '')}); try later, "
            "or sign in in a browser and use ExchangeServiceTicket"
        )
    if verdict is SsoVerdict.GONE:
        return MfaChallengeNotFound(
            "Garmin no longer holds this sign-in (it expired there); log in again"
        )
    if verdict is not SsoVerdict.REFUSED:
        return None
    if mfa_step:
        return MfaCodeRejected(f"Garmin refused the MFA code ({shown(kind or '')})")
    return GarminCredentialsRejected(f"Garmin refused the email or password ({shown(kind or '')})")
