"""Login and MFA over Garmin's SSO with garth, and what Garmin's refusals mean there.

* A refusal is told by the SSO answer's JSON type, on any status but the blocked ones, as for
  the DI provider (auth_service.upstream.sso_answers): on /mobile/api/login ->
  GarminCredentialsRejected, on /mobile/api/mfa/verifyCode -> MfaCodeRejected, or on a 401
  MfaChallengeNotFound (Garmin no longer holds the pending login). A 429 is rate limiting
  whatever its body. A captcha, an
  HTML page, or an accepting type we cannot use (SUCCESSFUL without a ticket) ->
  GarminUnavailable.
* A 401 on the ticket or token exchange is GarminUnavailable here (it points at the consumer
  key, not at the user); the rest is classified as everywhere (garmin_client.answers).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from auth_service.domain import passed_429s
from auth_service.domain.errors import (
    GarminRateLimited,
    MfaChallengeNotFound,
    UpstreamError,
)
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.models import LoginNeedsMfa, LoginResult, LoginSucceeded, PendingMfa
from auth_service.upstream.errors import as_domain
from auth_service.upstream.garth.isolation import (
    GARTH_FAILURES,
    GarthException,
    IsolatedClient,
    garth,
)
from auth_service.upstream.garth.tokens import tokens_from_garth
from auth_service.upstream.sso_answers import SsoVerdict, judge, sso_type, verdict_error
from garmin_client.answers import failure, http_response, log_failure
from garmin_client.endpoints import EXCHANGE_PATH, LOGIN_PATH, PREAUTHORIZED_PATH, VERIFY_MFA_PATH
from garmin_client.tokens import GarminTokens

log = logging.getLogger(__name__)


def sign_in(client: IsolatedClient, email: str, password: str, now: datetime) -> LoginResult:
    """Garmin's SSO login; an account with MFA stops at the code (LoginNeedsMfa). `now`: the
    service's time (the database's): the tokens' lifetimes and a Retry-After date count from
    it."""
    try:
        with _noting_passed_429s(client, now):
            outcome: tuple[Any, Any] = garth.sso.login(
                email, password, client=client, return_on_mfa=True
            )
        first, second = outcome
        if first != "needs_mfa":
            return LoginSucceeded(tokens_from_garth(first, second, client.domain, now))
        pending = PendingMfa(
            cookies=_cookies_of(client),
            login_params={str(k): str(v) for k, v in second["login_params"].items()},
            mfa_method=str(second["mfa_method"]),
            domain=client.domain,
        )
    except GARTH_FAILURES as exc:
        raise _login_failure("login", exc, client, now) from None
    return LoginNeedsMfa(pending)


def resume(client: IsolatedClient, pending: PendingMfa, code: str, now: datetime) -> GarminTokens:
    """Finish an MFA login with the user's code, in the SSO session the login left (`now`:
    as for sign_in)."""
    _restore_cookies(client, pending.cookies)
    state = {
        "client": client,
        "login_params": dict(pending.login_params),
        "mfa_method": pending.mfa_method,
    }
    try:
        with _noting_passed_429s(client, now):
            oauth1, oauth2 = garth.sso.resume_login(state, code)
        return tokens_from_garth(oauth1, oauth2, client.domain, now)
    except GARTH_FAILURES as exc:
        raise _login_failure("MFA verification", exc, client, now) from None


@contextlib.contextmanager
def _noting_passed_429s(client: IsolatedClient, now: datetime) -> Iterator[None]:
    """Note (for the gate and the sign-in cooldown to honour) each 429 garth went on past in
    the block: its best-effort load of the SSO's embed page. Whether the block then succeeds
    or fails further on (the ticket exchange), the SSO asked us to stop; the 429 the block
    raises, if any, reaches them as raised."""
    try:
        yield
    except GARTH_FAILURES as exc:
        _note_passed_429s(client, now, raised=exc)
        raise
    _note_passed_429s(client, now, raised=None)


def _note_passed_429s(client: IsolatedClient, now: datetime, raised: BaseException | None) -> None:
    for exc in client.rate_limited:
        if exc is raised:
            continue
        failed = failure("SSO page load", exc, judging_tokens=False, now=now)
        error = as_domain(failed, GarminEndpoint.SSO)
        if isinstance(error, GarminRateLimited):
            passed_429s.note(error)


def _login_failure(
    operation: str, exc: BaseException, client: IsolatedClient, now: datetime
) -> UpstreamError | MfaChallengeNotFound:
    rejection = _refusal(exc, client)
    if rejection is not None:
        # A refused password or code is routine.
        log_failure(operation, rejection, exc, routine=True)
        return rejection
    response = http_response(exc)
    path = urlsplit(response.url or "").path if response is not None else ""
    # Sign-in ends with the ticket exchanged for tokens at connectapi's OAuth endpoints.
    endpoint = (
        GarminEndpoint.OAUTH_EXCHANGE
        if path in (PREAUTHORIZED_PATH, EXCHANGE_PATH)
        else GarminEndpoint.SSO
    )
    error = as_domain(failure(operation, exc, judging_tokens=False, now=now), endpoint)
    unauthorized = response is not None and response.status_code == HTTPStatus.UNAUTHORIZED
    if unauthorized and endpoint is GarminEndpoint.OAUTH_EXCHANGE:
        log.error(
            "Garmin refused a freshly issued ticket or token: check "
            "GARMIN_AUTH_OAUTH_CONSUMER_KEY and GARMIN_AUTH_OAUTH_CONSUMER_SECRET, and this "
            "machine's clock (OAuth1 signs its time)"
        )
    return error


def _refusal(
    exc: BaseException, client: IsolatedClient
) -> UpstreamError | MfaChallengeNotFound | None:
    """What the SSO answer behind `exc` says of the email/password or the MFA code (None: it
    is no SSO answer; classified as everywhere)."""
    answered = _answered(exc, client)
    if answered is None:
        return None
    status, payload, path = answered
    mfa_step = path != LOGIN_PATH
    verdict = judge(status, payload, mfa_step=mfa_step)
    if verdict is SsoVerdict.RATE_LIMITED and status != HTTPStatus.TOO_MANY_REQUESTS:
        # Said in the body alone, which the classification below does not read.
        return GarminRateLimited(
            f"Garmin is rate limiting sign-ins (HTTP {status}, the answer says 429)",
            None,
            GarminEndpoint.SSO,
        )
    # A 429 (rate limiting) or an unreadable answer: classified as everywhere
    # (garmin_client.answers), which reads a Retry-After too.
    return verdict_error(verdict, sso_type(payload), mfa_step=mfa_step)


def _answered(exc: BaseException, client: IsolatedClient) -> tuple[int, object, str] | None:
    """The SSO answer behind `exc`: its status, JSON and path (None: not an SSO answer).
    garth raises requests' HTTPError for a 4xx/5xx, and a bare GarthException("SSO error:
    <type>: ...") for a 200 whose type is neither SUCCESSFUL nor MFA_REQUIRED; the type is
    read from the answer itself, not parsed out of garth's message."""
    response = http_response(exc)
    if response is None and type(exc) is GarthException:
        response = getattr(client, "last_resp", None)
    if response is None:
        return None
    path = urlsplit(response.url or "").path
    if path not in (LOGIN_PATH, VERIFY_MFA_PATH):
        return None
    try:
        payload = response.json()
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's stack
        payload = None
    return response.status_code, payload, path


# --- Cookies of an interrupted (MFA) login -----------------------------------------------------


def _cookies_of(client: IsolatedClient) -> list[dict[str, str | None]]:
    return [
        {"name": cookie.name, "value": cookie.value, "domain": cookie.domain, "path": cookie.path}
        for cookie in client.sess.cookies
    ]


def _restore_cookies(client: IsolatedClient, cookies: list[dict[str, str | None]]) -> None:
    for cookie in cookies:
        name, value = cookie.get("name"), cookie.get("value")
        if not name or value is None:
            continue
        client.sess.cookies.set(
            name, value, domain=cookie.get("domain") or "", path=cookie.get("path") or "/"
        )
