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
    GarminRateLimited,
    GarminUnavailable,
    MfaChallengeNotFound,
    UpstreamError,
)
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.models import PendingMfa, SessionKind
from auth_service.upstream.di.sso_http import SsoAnswer, SsoHttp
from auth_service.upstream.sso_answers import (
    SsoVerdict,
    judge,
    shown,
    sso_type,
    verdict_error,
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


def _failure(
    answer: SsoAnswer, step: str, now: datetime, *, mfa_step: bool
) -> UpstreamError | MfaChallengeNotFound:
    """What an answer that is no success means (sso_answers.judge), for either step (`now`:
    the clock a Retry-After date is measured on)."""
    kind = _answer_type(answer)
    verdict = judge(answer.status, answer.payload, mfa_step=mfa_step)
    judged = verdict_error(verdict, kind, mfa_step=mfa_step)
    if judged is not None:
        routine = verdict in (SsoVerdict.REFUSED, SsoVerdict.GONE)
        log.log(
            logging.INFO if routine else logging.WARNING,
            "garmin %s: %s (HTTP %d)",
            step,
            verdict.value,
            answer.status,
        )
        return judged
    if verdict is SsoVerdict.RATE_LIMITED:
        error: UpstreamError = GarminRateLimited(
            f"Garmin is rate limiting sign-ins ({step}, HTTP {answer.status})",
            retry_after_seconds(answer.retry_after, now),
            GarminEndpoint.SSO,
        )
    else:
        error = _unreadable(answer, kind, step)
    log.warning("garmin %s failed: %s (HTTP %d)", step, type(error).__name__, answer.status)
    return error


def _unreadable(answer: SsoAnswer, kind: str | None, step: str) -> GarminUnavailable:
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
        raise _failure(answer, "login", self._clock.now(), mfa_step=False)

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
        raise _failure(answer, "MFA verification", self._clock.now(), mfa_step=True)

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
