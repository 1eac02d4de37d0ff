"""Login and MFA over Garmin's SSO with garth, and what Garmin's refusals mean there.

* 401 on /mobile/api/login, or an SSO answer whose type is neither SUCCESSFUL nor
  MFA_REQUIRED -> GarminCredentialsRejected.
* 400/401 on /mobile/api/mfa/verifyCode, or an answer whose type is not SUCCESSFUL ->
  MfaCodeRejected.
* A 401 on the ticket or token exchange is GarminUnavailable here (it points at the consumer
  key, not at the user); the rest is classified as everywhere (garmin_client.answers).
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import urlsplit

from requests.models import Response

from auth_service.domain.errors import (
    GarminCredentialsRejected,
    GarminUnavailable,
    MfaCodeRejected,
    UpstreamError,
)
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.models import LoginNeedsMfa, LoginResult, LoginSucceeded, PendingMfa
from auth_service.upstream.errors import BLOCKED_SSO_TYPES, as_domain
from auth_service.upstream.garth.isolation import (
    GARTH_FAILURES,
    GarthException,
    IsolatedClient,
    garth,
)
from auth_service.upstream.garth.tokens import tokens_from_garth
from garmin_client.answers import failure, http_response, log_failure
from garmin_client.endpoints import EXCHANGE_PATH, LOGIN_PATH, PREAUTHORIZED_PATH, VERIFY_MFA_PATH
from garmin_client.tokens import GarminTokens

log = logging.getLogger(__name__)

_SSO_TYPE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def sign_in(client: IsolatedClient, email: str, password: str) -> LoginResult:
    """Garmin's SSO login; an account with MFA stops at the code (LoginNeedsMfa)."""
    try:
        outcome: tuple[Any, Any] = garth.sso.login(
            email, password, client=client, return_on_mfa=True
        )
        first, second = outcome
        if first != "needs_mfa":
            return LoginSucceeded(tokens_from_garth(first, second, client.domain))
        pending = PendingMfa(
            cookies=_cookies_of(client),
            login_params={str(k): str(v) for k, v in second["login_params"].items()},
            mfa_method=str(second["mfa_method"]),
            domain=client.domain,
        )
    except GARTH_FAILURES as exc:
        raise _login_failure("login", exc, client) from None
    return LoginNeedsMfa(pending)


def resume(client: IsolatedClient, pending: PendingMfa, code: str) -> GarminTokens:
    """Finish an MFA login with the user's code, in the SSO session the login left."""
    _restore_cookies(client, pending.cookies)
    state = {
        "client": client,
        "login_params": dict(pending.login_params),
        "mfa_method": pending.mfa_method,
    }
    try:
        oauth1, oauth2 = garth.sso.resume_login(state, code)
        return tokens_from_garth(oauth1, oauth2, client.domain)
    except GARTH_FAILURES as exc:
        raise _login_failure("MFA verification", exc, client) from None


def _login_failure(operation: str, exc: BaseException, client: IsolatedClient) -> UpstreamError:
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
    error = as_domain(failure(operation, exc, judging_tokens=False), endpoint)
    unauthorized = response is not None and response.status_code == HTTPStatus.UNAUTHORIZED
    if unauthorized and endpoint is GarminEndpoint.OAUTH_EXCHANGE:
        log.error("Garmin refused a freshly issued ticket or token: check the OAuth consumer key")
    return error


def _refusal(exc: BaseException, client: IsolatedClient) -> UpstreamError | None:
    """Garmin refusing the email/password or the MFA code, if that is what `exc` is."""
    response = http_response(exc)
    if response is not None:
        status = response.status_code
        path = urlsplit(response.url or "").path
        if status == HTTPStatus.UNAUTHORIZED and path == LOGIN_PATH:
            return GarminCredentialsRejected("Garmin refused the email or password")
        if status in (HTTPStatus.BAD_REQUEST, HTTPStatus.UNAUTHORIZED) and path == VERIFY_MFA_PATH:
            return MfaCodeRejected("Garmin refused the MFA code")
        return None
    if type(exc) is GarthException:
        return _sso_rejection(client)
    return None


def _sso_rejection(client: IsolatedClient) -> UpstreamError | None:
    """The rejection an SSO JSON answer of type other than SUCCESSFUL/MFA_REQUIRED means.

    garth raises a bare GarthException("SSO error: <type>: <message>") for those; the type is
    read back from the answer itself rather than parsed out of garth's message.
    """
    answered = _answer_type(client)
    if answered is None:
        return None
    kind, path = answered
    shown = kind if _SSO_TYPE.fullmatch(kind) else "unexpected type"
    if kind in BLOCKED_SSO_TYPES:
        # Garmin's edge is blocking this server: nobody's password or code was refused.
        return GarminUnavailable(
            f"Garmin's sign-in is blocking this server for now ({shown}); try later, or "
            "sign in in a browser and use ExchangeServiceTicket"
        )
    if path == LOGIN_PATH:
        return GarminCredentialsRejected(f"Garmin refused the email or password ({shown})")
    if path == VERIFY_MFA_PATH:
        return MfaCodeRejected(f"Garmin refused the MFA code ({shown})")
    return None


def _answer_type(client: IsolatedClient) -> tuple[str, str] | None:
    """The last SSO answer's responseStatus type and its path (None: no such 200 answer)."""
    last: Response | None = getattr(client, "last_resp", None)
    if last is None or last.status_code != HTTPStatus.OK:
        return None
    try:
        payload = last.json()
    except ValueError:
        return None
    status = payload.get("responseStatus") if isinstance(payload, dict) else None
    kind = status.get("type") if isinstance(status, dict) else None
    if not isinstance(kind, str) or not kind:
        return None
    return kind, urlsplit(last.url or "").path


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
