"""Garmin's mobile JSON login and its MFA step, and what each SSO answer means.

* ``SUCCESSFUL`` with ``serviceTicketId`` -> the ticket (exchanged by the provider).
* ``MFA_REQUIRED`` -> a PendingMfa holding the SSO cookies of that answer (the code is bound
  to them), so SubmitMfa may finish on any replica.
* A refusal is told by the answer's JSON type, never by its HTTP status alone (Garmin's edge
  puts captchas and HTML pages on any status): any type but SUCCESSFUL, MFA_REQUIRED and the
  blocked ones, on a status that is not 403, 429 or 5xx (auth_service.upstream.sso_answers).
  On the login -> GarminCredentialsRejected (the facts file names INVALID_USERNAME_PASSWORD);
  on the MFA step -> MfaCodeRejected (the challenge stays usable), or on a 401
  MfaChallengeNotFound: Garmin no longer holds the pending login (its lifetime is uncertain),
  so no code can succeed on it and the user must log in again.
* 429 -> GarminRateLimited (the service starts the account's sign-in cooldown); a Retry-After
  date is measured on the provider's clock, the one the cooldown is kept on.
* ``CAPTCHA_REQUIRED``, 403, an HTML page, 5xx, and anything unreadable (no JSON type, a
  ``SUCCESSFUL`` without a ticket) -> GarminUnavailable: Garmin's
  edge is blocking this server for now, or answered what we cannot judge; nobody's password
  or code was refused. ExchangeServiceTicket is the way in meanwhile.
"""

from __future__ import annotations

import logging
from datetime import datetime
from http import HTTPStatus
from typing import Any, Final

from auth_service.domain.clock import Clock
from auth_service.domain.errors import (
    GarminCredentialsRejected,
    GarminRateLimited,
    GarminUnavailable,
    MfaChallengeNotFound,
    MfaCodeRejected,
    UpstreamError,
)
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.models import PendingMfa, SessionKind
from auth_service.upstream.di.sso_http import SsoAnswer, SsoHttp
from auth_service.upstream.sso_answers import (
    BLOCKED_SSO_TYPES,
    shown,
    sso_refusal,
    sso_type,
)
from garmin_client.answers import retry_after_seconds
from garmin_client.endpoints import DEFAULT_DOMAIN, LOGIN_PATH, VERIFY_MFA_PATH

log = logging.getLogger(__name__)

# The iOS app's SSO client (the facts file's login URL).
SSO_CLIENT_ID: Final = "GCM_IOS_DARK"
SSO_LOCALE: Final = "en-US"


def _sso_url(domain: str, path: str) -> str:
    return f"https://sso.{domain}{path}"


def _params(service_url: str) -> dict[str, str]:
    return {"clientId": SSO_CLIENT_ID, "locale": SSO_LOCALE, "service": service_url}


def _answer_type(answer: SsoAnswer) -> str | None:
    return sso_type(answer.payload)


def _ticket(answer: SsoAnswer) -> str | None:
    ticket = answer.payload.get("serviceTicketId") if isinstance(answer.payload, dict) else None
    return ticket if isinstance(ticket, str) and ticket else None


def _refusal(answer: SsoAnswer) -> str | None:
    return sso_refusal(answer.status, _answer_type(answer))


def _failure(answer: SsoAnswer, step: str, now: datetime) -> UpstreamError:
    """What an answer that is neither a success nor a refusal means, for either step (`now`:
    the clock a Retry-After date is measured on)."""
    if answer.status == HTTPStatus.TOO_MANY_REQUESTS:
        return GarminRateLimited(
            f"Garmin is rate limiting sign-ins ({step}, HTTP 429)",
            retry_after_seconds(answer.retry_after, now),
            GarminEndpoint.SSO,
        )
    kind = _answer_type(answer)
    if kind in BLOCKED_SSO_TYPES:
        return GarminUnavailable(f"Garmin's sign-in wants a captcha ({step}); try later")
    if kind is not None and answer.status < HTTPStatus.INTERNAL_SERVER_ERROR:
        # An accepting type we cannot use (a SUCCESSFUL without its ticket): nothing refused.
        return GarminUnavailable(
            f"Garmin answered something unreadable ({step}: {shown(kind)}, HTTP {answer.status})"
        )
    if answer.status == HTTPStatus.OK:
        return GarminUnavailable(f"Garmin answered something unreadable ({step})")
    return GarminUnavailable(f"Garmin answered HTTP {answer.status} ({step})")


def _cookies(pending: PendingMfa) -> dict[str, str]:
    return {
        name: cookie.get("value") or ""
        for cookie in pending.cookies
        if (name := cookie.get("name"))
    }


class SsoLogin:
    """The two SSO steps over one SsoHttp."""

    def __init__(self, http: SsoHttp, service_url: str, clock: Clock) -> None:
        self._http = http
        self._service_url = service_url
        # The service's clock (the database's): Garmin's Retry-After dates become waits that
        # the service keeps on it.
        self._clock = clock

    def login(self, email: str, password: str) -> str | PendingMfa:
        """The service ticket, or the pending login when Garmin wants an MFA code."""
        answer = self._http.post_json(
            _sso_url(DEFAULT_DOMAIN, LOGIN_PATH),
            _params(self._service_url),
            {"username": email, "password": password, "rememberMe": True, "captchaToken": ""},
            {},
        )
        kind = _answer_type(answer)
        ticket = _ticket(answer)
        if answer.status == HTTPStatus.OK and kind == "SUCCESSFUL" and ticket is not None:
            return ticket
        if answer.status == HTTPStatus.OK and kind == "MFA_REQUIRED":
            return self._pending(answer)
        refusal = _refusal(answer)
        if refusal is not None:
            log.info("garmin sign-in refused the credentials (HTTP %d)", answer.status)
            raise GarminCredentialsRejected(
                f"Garmin refused the email or password ({shown(refusal)})"
            )
        error = _failure(answer, "login", self._clock.now())
        log.warning("garmin login failed: %s (HTTP %d)", type(error).__name__, answer.status)
        raise error

    def verify_mfa(self, pending: PendingMfa, code: str) -> str:
        """The service ticket for the MFA code, on the pending login's SSO cookies."""
        answer = self._http.post_json(
            _sso_url(pending.domain, VERIFY_MFA_PATH),
            _params(pending.login_params.get("service", self._service_url)),
            {
                "mfaMethod": pending.mfa_method,
                "mfaVerificationCode": code,
                "rememberMyBrowser": True,
                "reconsentList": [],
                "mfaSetup": False,
            },
            _cookies(pending),
        )
        kind = _answer_type(answer)
        ticket = _ticket(answer)
        if answer.status == HTTPStatus.OK and kind == "SUCCESSFUL" and ticket is not None:
            return ticket
        refusal = _refusal(answer)
        if refusal is not None:
            if answer.status == HTTPStatus.UNAUTHORIZED:
                log.info("garmin MFA verification: the pending login is gone (HTTP 401)")
                raise MfaChallengeNotFound(
                    "Garmin no longer holds this sign-in (it expired there); log in again"
                )
            log.info("garmin MFA verification refused the code (HTTP %d)", answer.status)
            raise MfaCodeRejected(f"Garmin refused the MFA code ({shown(refusal)})")
        error = _failure(answer, "MFA verification", self._clock.now())
        log.warning(
            "garmin MFA verification failed: %s (HTTP %d)", type(error).__name__, answer.status
        )
        raise error

    def _pending(self, answer: SsoAnswer) -> PendingMfa:
        info: Any = answer.payload.get("customerMfaInfo")
        method = info.get("mfaLastMethodUsed") if isinstance(info, dict) else None
        return PendingMfa(
            cookies=[{"name": name, "value": value} for name, value in answer.cookies.items()],
            login_params={"service": self._service_url},
            mfa_method=method if isinstance(method, str) and method else "email",
            domain=DEFAULT_DOMAIN,
            flow=SessionKind.DI_OAUTH2,
        )
