"""Garmin through garth 0.8.0. This is the only module of the codebase that imports garth.

``GarthUpstream`` implements the domain's ``GarminUpstream`` port (login, MFA, refresh,
validate); ``GarminApiSession`` gives the sync worker authenticated Connect API calls. Both
raise only the ``UpstreamError`` subclasses of ``auth_service.domain.errors``, with messages
that never contain a token, password, cookie or ticket.

garth 0.8.0 traps this module defuses:

* ``import garth`` builds a module-global client that reads ``GARTH_HOME``/``GARTH_TOKEN``
  (and ``GARTH_TELEMETRY_*``) from the environment: garth is imported with those variables
  hidden, and every call uses its own ``_IsolatedClient`` that reads nothing from the
  environment, writes no files and sends no telemetry.
* ``garth.sso.OAUTH_CONSUMER`` is downloaded from S3 when empty: it is replaced by a mapping
  that is never empty and answers the consumer of the settings of the call in progress.
* ``Client.configure()`` mounts garth's own retrying adapter: ours is mounted again after
  every configure, so our retry policy (no sleeping on Retry-After, no retried POST) and the
  optional base-URL rewriting apply to every request, OAuth1-signed ones included.
* ``Client.request`` has a shared mutable ``headers={}`` default into which it writes the
  Authorization header: every call made here passes a fresh dict.
* ``Client.refresh_oauth2`` forgets the OAuth1 token when an exchange fails: the isolated
  client never does, refresh() exchanges itself, and refreshed tokens are reported only
  while the OAuth1 token is still present.

Error mapping (the statuses that mean something are few on purpose):

* 429 anywhere -> GarminRateLimited (retry_after_seconds from Retry-After, seconds or date).
* login(): 401 on /mobile/api/login, or an SSO answer whose type is neither SUCCESSFUL nor
  MFA_REQUIRED -> GarminCredentialsRejected.
* resume_mfa(): 400/401 on /mobile/api/mfa/verifyCode, or an answer whose type is not
  SUCCESSFUL -> MfaCodeRejected.
* refresh/validate/API: 401 on the token exchange or on the API -> GarminSessionRejected.
  403 is not a definite rejection (Garmin's edge answers 403 to clients it dislikes): it is
  GarminUnavailable like every other status. During login a 401 on the ticket or token
  exchange is also GarminUnavailable (it points at the consumer key, not at the user).
* everything else (5xx, other 4xx, timeouts, connection errors, malformed JSON, HTML where
  JSON was expected, missing fields) -> GarminUnavailable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import requests
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest, Response
from requests.utils import should_bypass_proxies
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError
from urllib3.util.retry import Retry

from auth_service.domain.clock import Clock, SystemClock
from auth_service.domain.errors import (
    GarminCredentialsRejected,
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
    MfaCodeRejected,
    UpstreamError,
)
from auth_service.domain.models import (
    GarminTokens,
    LoginNeedsMfa,
    LoginResult,
    LoginSucceeded,
    OAuth1Token,
    OAuth2Token,
    PendingMfa,
)
from auth_service.metrics.upstream import observe_upstream_send
from garmin_client.settings import UpstreamSettings

log = logging.getLogger(__name__)

# --- Importing garth without letting it read our environment ---------------------------

_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _garth_environment_hidden() -> Iterator[None]:
    """Hide every GARTH_* variable (pydantic-settings matches them case-insensitively)."""
    with _ENV_LOCK:
        hidden = {
            name: value for name, value in os.environ.items() if name.upper().startswith("GARTH_")
        }
        for name in hidden:
            del os.environ[name]
        try:
            yield
        finally:
            os.environ.update(hidden)


with _garth_environment_hidden(), warnings.catch_warnings():
    # garth announces its own deprecation at import; the pin to its last release is deliberate.
    warnings.simplefilter("ignore", DeprecationWarning)
    import garth
    import garth.http
    import garth.sso
    from garth.auth_tokens import OAuth1Token as GarthOAuth1Token
    from garth.auth_tokens import OAuth2Token as GarthOAuth2Token
    from garth.exc import GarthException, GarthHTTPError
    from garth.telemetry import Telemetry
    from garth.utils import asdict as garth_asdict

DEFAULT_DOMAIN: Final = "garmin.com"
LOGIN_PATH: Final = "/mobile/api/login"
VERIFY_MFA_PATH: Final = "/mobile/api/mfa/verifyCode"
PREAUTHORIZED_PATH: Final = "/oauth-service/oauth/preauthorized"
EXCHANGE_PATH: Final = "/oauth-service/oauth/exchange/user/2.0"
PROFILE_PATH: Final = "/userprofile-service/socialProfile"

# Statuses worth retrying on an idempotent GET; 429 is not one of them (we never wait on it).
RETRY_STATUSES: Final = (408, 500, 502, 503, 504)
RETRY_BACKOFF_FACTOR: Final = 0.2
# validate() refreshes an access token this close to its expiry, so it does not lapse mid-call.
EXPIRY_MARGIN_SECONDS: Final = 30.0

# What garth and requests raise when Garmin misbehaves. RequestException is an OSError;
# ValueError covers JSON decoding and pydantic validation; KeyError/TypeError/AttributeError
# come from garth reading answers that lack a field or have the wrong shape; RecursionError
# from JSON nested deeper than the parser can follow (a broken or hostile answer).
_GARTH_FAILURES: Final = (
    GarthException,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    ArithmeticError,
    RecursionError,
)


# --- The OAuth consumer comes from our settings ------------------------------------------

_ACTIVE_CONSUMER: ContextVar[tuple[str, str] | None] = ContextVar(
    "garmin_oauth_consumer", default=None
)


class _ConsumerOfTheCall(dict[str, str]):
    """Stands in for garth.sso.OAUTH_CONSUMER.

    Never empty, so garth never downloads a consumer; the values are those of the settings
    of the call in progress in this thread/context (several settings may coexist in tests).
    """

    def __init__(self) -> None:
        super().__init__(consumer_key="", consumer_secret="")

    def __getitem__(self, key: str) -> str:
        active = _ACTIVE_CONSUMER.get()
        if active is not None and key == "consumer_key":
            return active[0]
        if active is not None and key == "consumer_secret":
            return active[1]
        return super().__getitem__(key)


_CONSUMER: Final = _ConsumerOfTheCall()
garth.sso.OAUTH_CONSUMER = _CONSUMER


@contextlib.contextmanager
def _consumer_of(settings: UpstreamSettings) -> Iterator[None]:
    """Make garth sign with the settings' consumer for the duration of the block."""
    if garth.sso.OAUTH_CONSUMER is not _CONSUMER:
        # Something replaced garth's global since import: put ours back before any garth call.
        garth.sso.OAUTH_CONSUMER = _CONSUMER
    token = _ACTIVE_CONSUMER.set((settings.consumer_key, settings.consumer_secret))
    try:
        yield
    finally:
        _ACTIVE_CONSUMER.reset(token)


# --- Transport: our retries, our timeout, optional base URL ------------------------------


def _retry_policy(retries: int) -> Retry:
    return Retry(
        total=retries,
        status_forcelist=RETRY_STATUSES,
        # A POST (login, MFA code, token exchange) may have taken effect: never resend it.
        allowed_methods=frozenset({"GET"}),
        backoff_factor=RETRY_BACKOFF_FACTOR,
        # A 429's Retry-After can say an hour: the caller decides, we never sleep on it.
        respect_retry_after_header=False,
        # After the last retry hand back Garmin's answer, so it is classified by its status.
        raise_on_status=False,
    )


class _UpstreamTransport(HTTPAdapter):
    """The adapter every request of an isolated client goes through (mounted on https://).

    With a base URL (GARMIN_AUTH_UPSTREAM_URL) it sends https://<host>/<path>?<query> to
    <base>/<path>?<query>, telling the receiver the original host in X-Forwarded-Host so it
    can check OAuth1 signatures, which cover the original URL.
    """

    def __init__(self, settings: UpstreamSettings) -> None:
        super().__init__(max_retries=_retry_policy(settings.retries))
        self._base = urlsplit(settings.base_url) if settings.base_url else None
        self._timeout = settings.timeout_seconds

    @observe_upstream_send  # metrics: endpoint template, outcome, latency (auth_service.metrics)
    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        if timeout is None:
            timeout = self._timeout
        if self._base is None:
            return super().send(request, stream, timeout, verify, cert, proxies)
        original_url = request.url or ""
        routed = self._routed(request, original_url)
        if proxies and should_bypass_proxies(routed.url or "", no_proxy=None):
            # The session chose proxies for the original host, not for the base URL's.
            proxies = {}
        response = super().send(routed, stream, timeout, verify, cert, proxies)
        # Callers (garth, our classifier, cookie handling) must see the URL they asked for.
        response.url = original_url
        response.request = request
        return response

    def _routed(self, request: PreparedRequest, original_url: str) -> PreparedRequest:
        assert self._base is not None
        original = urlsplit(original_url)
        routed = request.copy()
        base_path = self._base.path.rstrip("/")
        routed.url = urlunsplit(
            (self._base.scheme, self._base.netloc, base_path + original.path, original.query, "")
        )
        routed.headers["X-Forwarded-Host"] = original.netloc
        return routed


# --- An isolated garth client --------------------------------------------------------------


class _NoTelemetry(Telemetry):
    """garth's telemetry, off for good: reads no environment, attaches no hook."""

    # The overrides below keep their parents' signatures (pydantic and garth call them with
    # keywords), hence the unused arguments.
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only explicit arguments: GARTH_TELEMETRY_ENABLED=true must not turn it on.
        return (init_settings,)

    def configure(
        self,
        enabled: bool | None = None,  # noqa: ARG002
        send_to_logfire: bool | None = None,  # noqa: ARG002
        token: str | None = None,  # noqa: ARG002
        callback: Any = None,  # noqa: ARG002
    ) -> None:
        self.enabled = False

    def attach(self, session: requests.Session) -> None:  # noqa: ARG002
        return None


class _IsolatedClient(garth.Client):
    """A garth.Client for one call (or one GarminApiSession).

    Reads nothing from the environment, writes no files, sends no telemetry, and sends
    every request through _UpstreamTransport.
    """

    def __init__(self, settings: UpstreamSettings, domain: str) -> None:
        # Deliberately not garth.Client.__init__: it builds a Telemetry from GARTH_TELEMETRY_*,
        # may print, and _auto_resume()s from GARTH_HOME/GARTH_TOKEN.
        self._transport = _UpstreamTransport(settings)
        self.sess = requests.Session()
        self.sess.headers.update(garth.http.USER_AGENT)
        self.telemetry = _NoTelemetry(enabled=False)
        self.configure(domain=domain)
        # requests takes float timeouts; garth annotates int.
        self.timeout = settings.timeout_seconds  # type: ignore[assignment]

    def configure(self, *args: Any, **kwargs: Any) -> None:
        kwargs["telemetry_enabled"] = False
        super().configure(*args, **kwargs)
        # configure() just mounted garth's own retrying adapter: ours decides.
        self.sess.mount("https://", self._transport)

    def _auto_resume(self) -> None:
        """Never resume from GARTH_HOME/GARTH_TOKEN."""

    def refresh_oauth2(self) -> None:
        """Exchange OAuth1 for OAuth2 (garth calls this when the access token expired).

        Unlike garth's, keeps the OAuth1 token when the exchange fails: a 429 must not lose
        the session.
        """
        oauth1 = self.oauth1_token
        if not isinstance(oauth1, GarthOAuth1Token):
            raise GarthException(msg="no OAuth1 token to exchange")
        self.oauth2_token = garth.sso.exchange(oauth1, self)

    def close(self) -> None:
        self.sess.close()


@contextlib.contextmanager
def _client_for_call(settings: UpstreamSettings, domain: str) -> Iterator[_IsolatedClient]:
    client = _IsolatedClient(settings, domain)
    try:
        with _consumer_of(settings):
            yield client
    finally:
        client.close()


# --- Error classification -------------------------------------------------------------------


class _Stage(enum.Enum):
    # Garmin judging an email/password or an MFA code.
    LOGIN = "login"
    # Garmin judging stored tokens (exchange, API).
    SESSION = "session"


class _AccessTokenRejected(GarminSessionRejected):
    """A 401 from the Connect API (not from the exchange): a refresh may still save it."""


_STEP_NAMES: Final = {
    "/mobile/sso/en/sign-in": "sign-in page",
    LOGIN_PATH: "login",
    VERIFY_MFA_PATH: "MFA verification",
    "/portal/sso/embed": "SSO embed page",
    PREAUTHORIZED_PATH: "ticket exchange",
    EXCHANGE_PATH: "token exchange",
}


def _step_name(path: str) -> str:
    return _STEP_NAMES.get(path, "Connect API")


def _http_response(exc: BaseException) -> Response | None:
    if isinstance(exc, GarthHTTPError):
        return exc.error.response
    if isinstance(exc, requests.HTTPError):
        return exc.response
    return None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        return _seconds_until_http_date(text, now or datetime.now(UTC))
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _seconds_until_http_date(text: str, now: datetime) -> float | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


def _from_status(response: Response, stage: _Stage) -> UpstreamError:
    status = response.status_code
    path = urlsplit(response.url or "").path
    step = _step_name(path)
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return GarminRateLimited(f"Garmin is rate limiting ({step}, HTTP 429)", retry_after)
    if stage is _Stage.LOGIN:
        if status == HTTPStatus.UNAUTHORIZED and path == LOGIN_PATH:
            return GarminCredentialsRejected("Garmin refused the email or password")
        if status in (HTTPStatus.BAD_REQUEST, HTTPStatus.UNAUTHORIZED) and path == VERIFY_MFA_PATH:
            return MfaCodeRejected("Garmin refused the MFA code")
    elif status == HTTPStatus.UNAUTHORIZED and path == EXCHANGE_PATH:
        return GarminSessionRejected("Garmin refused the session (HTTP 401 on the token exchange)")
    elif status == HTTPStatus.UNAUTHORIZED and path != PREAUTHORIZED_PATH:
        return _AccessTokenRejected("Garmin refused the session (HTTP 401 on the Connect API)")
    return GarminUnavailable(f"Garmin answered HTTP {status} ({step})")


_SSO_TYPE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def _sso_rejection(client: _IsolatedClient) -> UpstreamError | None:
    """The rejection an SSO JSON answer of type other than SUCCESSFUL/MFA_REQUIRED means.

    garth raises a bare GarthException("SSO error: <type>: <message>") for those; the type is
    read back from the answer itself rather than parsed out of garth's message.
    """
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
    shown = kind if _SSO_TYPE.fullmatch(kind) else "unexpected type"
    path = urlsplit(last.url or "").path
    if path == LOGIN_PATH:
        return GarminCredentialsRejected(f"Garmin refused the email or password ({shown})")
    if path == VERIFY_MFA_PATH:
        return MfaCodeRejected(f"Garmin refused the MFA code ({shown})")
    return None


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, requests.Timeout):
        return True
    # Once a GET's retries are used up, requests reports a read timeout as a ConnectionError
    # wrapping urllib3's MaxRetryError(reason=ReadTimeoutError).
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, Urllib3TimeoutError)


def _classify(exc: BaseException, stage: _Stage, client: _IsolatedClient | None) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    response = _http_response(exc)
    if response is not None:
        return _from_status(response, stage)
    if type(exc) is GarthException and stage is _Stage.LOGIN and client is not None:
        rejection = _sso_rejection(client)
        if rejection is not None:
            return rejection
    return _without_answer(exc.error if isinstance(exc, GarthHTTPError) else exc)


def _without_answer(cause: BaseException) -> GarminUnavailable:
    """No HTTP status to go by: the network failed or the answer could not be read."""
    if _is_timeout(cause):
        return GarminUnavailable("Garmin did not answer in time")
    # Before OSError: requests' JSONDecodeError is both a ValueError and a RequestException.
    if isinstance(cause, ValueError):
        return GarminUnavailable("Garmin answered something unreadable")
    if isinstance(cause, OSError):
        return GarminUnavailable("Garmin could not be reached")
    return GarminUnavailable("Garmin answered something unreadable")


def _failure(
    operation: str, exc: BaseException, stage: _Stage, client: _IsolatedClient | None
) -> UpstreamError:
    """Classify and log one line (class names, status, path: never a secret)."""
    error = _classify(exc, stage, client)
    response = _http_response(exc)
    detail = (
        f"HTTP {response.status_code} on {urlsplit(response.url or '').path}"
        if response is not None
        else type(exc).__name__
    )
    # A refused password or code is routine; the rest may need an operator's eye.
    routine = isinstance(error, GarminCredentialsRejected | MfaCodeRejected)
    log.log(
        logging.INFO if routine else logging.WARNING,
        "garmin %s failed: %s (%s)",
        operation,
        type(error).__name__,
        detail,
    )
    if (
        stage is _Stage.LOGIN
        and response is not None
        and response.status_code == HTTPStatus.UNAUTHORIZED
    ):
        path = urlsplit(response.url or "").path
        if path in (PREAUTHORIZED_PATH, EXCHANGE_PATH):
            log.error(
                "Garmin refused a freshly issued ticket or token: check the OAuth consumer key"
            )
    return error


# --- Conversions between garth's tokens and ours ---------------------------------------------


def _as_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    # garth parses Garmin's "2024-08-02 05:56:10.000" into a naive datetime; Garmin means UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _oauth1_from_garth(token: GarthOAuth1Token) -> OAuth1Token:
    return OAuth1Token(
        oauth_token=token.oauth_token,
        oauth_token_secret=token.oauth_token_secret,
        mfa_token=token.mfa_token,
        mfa_expires_at=_as_utc(token.mfa_expiration_timestamp),
    )


def _oauth1_to_garth(token: OAuth1Token, domain: str) -> GarthOAuth1Token:
    return GarthOAuth1Token(
        oauth_token=token.oauth_token,
        oauth_token_secret=token.oauth_token_secret,
        mfa_token=token.mfa_token,
        mfa_expiration_timestamp=token.mfa_expires_at,
        domain=domain,
    )


def _oauth2_from_garth(token: GarthOAuth2Token) -> OAuth2Token:
    return OAuth2Token(
        scope=token.scope,
        jti=token.jti,
        token_type=token.token_type,
        access_token=token.access_token,
        refresh_token=token.refresh_token,
        expires_at=datetime.fromtimestamp(token.expires_at, tz=UTC),
        refresh_token_expires_at=datetime.fromtimestamp(token.refresh_token_expires_at, tz=UTC),
    )


def _oauth2_to_garth(token: OAuth2Token, now: float) -> GarthOAuth2Token:
    expires_at = int(token.expires_at.timestamp())
    refresh_expires_at = int(token.refresh_token_expires_at.timestamp())
    # garth keeps the original lifetimes in *_expires_in; only *_expires_at drives its
    # decisions. We keep no lifetime, so the remaining one stands in for it.
    return GarthOAuth2Token(
        scope=token.scope,
        jti=token.jti,
        token_type=token.token_type,
        access_token=token.access_token,
        refresh_token=token.refresh_token,
        expires_in=max(0, int(expires_at - now)),
        expires_at=expires_at,
        refresh_token_expires_in=max(0, int(refresh_expires_at - now)),
        refresh_token_expires_at=refresh_expires_at,
    )


def _tokens_from_garth(oauth1: object, oauth2: object, domain: str) -> GarminTokens:
    if not isinstance(oauth1, GarthOAuth1Token) or not isinstance(oauth2, GarthOAuth2Token):
        raise GarminUnavailable("Garmin's answer did not include the tokens")
    return GarminTokens(
        oauth1=_oauth1_from_garth(oauth1), oauth2=_oauth2_from_garth(oauth2), domain=domain
    )


def _bearer(token: OAuth2Token) -> str:
    # The same rendering as garth's str(OAuth2Token).
    return f"{token.token_type.title()} {token.access_token}"


# What Client.dumps() serializes with; garth leaves it unannotated.
_garth_asdict: Callable[[object], Any] = garth_asdict


def tokens_to_garth_dumps(tokens: GarminTokens) -> str:
    """The session as garth's ``Client.dumps()`` string (base64 of [oauth1, oauth2] JSON)."""
    pair = [
        _garth_asdict(_oauth1_to_garth(tokens.oauth1, tokens.domain)),
        _garth_asdict(_oauth2_to_garth(tokens.oauth2, time.time())),
    ]
    return base64.b64encode(json.dumps(pair).encode()).decode()


def tokens_from_garth_dumps(s: str) -> GarminTokens:
    """Parse garth's ``Client.dumps()`` string.

    Raises ValueError, with a message that never quotes the input, on anything malformed.
    """
    oauth1_raw, oauth2_raw = _decode_dumps(s)
    try:
        oauth1 = GarthOAuth1Token(**oauth1_raw)
    except (TypeError, ValueError):
        raise ValueError("garth session string: the OAuth1 token is malformed") from None
    try:
        oauth2 = GarthOAuth2Token(**oauth2_raw)
    except (TypeError, ValueError):
        raise ValueError("garth session string: the OAuth2 token is malformed") from None
    if not (oauth1.oauth_token and oauth1.oauth_token_secret and oauth2.access_token):
        raise ValueError("garth session string: a token is empty")
    try:
        return _tokens_from_garth(oauth1, oauth2, oauth1.domain or DEFAULT_DOMAIN)
    except (OverflowError, OSError, ValueError):
        raise ValueError("garth session string: an expiry is out of range") from None


def _decode_dumps(s: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        raw = base64.b64decode(s.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        raise ValueError("garth session string: not base64") from None
    try:
        pair = json.loads(raw)
    # RecursionError: JSON nested deeper than the parser's stack (a few kB of "[").
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("garth session string: not JSON") from None
    if (
        not isinstance(pair, list)
        or len(pair) != len(("oauth1", "oauth2"))
        or not all(isinstance(item, dict) for item in pair)
    ):
        raise ValueError("garth session string: expected a list of two token objects")
    return pair[0], pair[1]


# --- Cookies of an interrupted (MFA) login -----------------------------------------------------


def _cookies_of(client: _IsolatedClient) -> list[dict[str, str | None]]:
    return [
        {"name": cookie.name, "value": cookie.value, "domain": cookie.domain, "path": cookie.path}
        for cookie in client.sess.cookies
    ]


def _restore_cookies(client: _IsolatedClient, cookies: list[dict[str, str | None]]) -> None:
    for cookie in cookies:
        name, value = cookie.get("name"), cookie.get("value")
        if not name or value is None:
            continue
        client.sess.cookies.set(
            name, value, domain=cookie.get("domain") or "", path=cookie.get("path") or "/"
        )


# --- The port implementation -------------------------------------------------------------------


class GarthUpstream:
    """``GarminUpstream`` with garth: one isolated garth client per call, so it is thread-safe."""

    def __init__(self, settings: UpstreamSettings, *, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()

    def login(self, email: str, password: str) -> LoginResult:
        with _client_for_call(self._settings, DEFAULT_DOMAIN) as client:
            try:
                outcome = garth.sso.login(email, password, client=client, return_on_mfa=True)
                return self._login_result(outcome, client)
            except _GARTH_FAILURES as exc:
                raise _failure("login", exc, _Stage.LOGIN, client) from None

    def _login_result(self, outcome: tuple[Any, Any], client: _IsolatedClient) -> LoginResult:
        first, second = outcome
        if first != "needs_mfa":
            return LoginSucceeded(_tokens_from_garth(first, second, client.domain))
        pending = PendingMfa(
            cookies=_cookies_of(client),
            login_params={str(k): str(v) for k, v in second["login_params"].items()},
            mfa_method=str(second["mfa_method"]),
            domain=client.domain,
        )
        return LoginNeedsMfa(pending)

    def resume_mfa(self, pending: PendingMfa, code: str) -> GarminTokens:
        with _client_for_call(self._settings, pending.domain) as client:
            _restore_cookies(client, pending.cookies)
            state = {
                "client": client,
                "login_params": dict(pending.login_params),
                "mfa_method": pending.mfa_method,
            }
            try:
                oauth1, oauth2 = garth.sso.resume_login(state, code)
                return _tokens_from_garth(oauth1, oauth2, client.domain)
            except _GARTH_FAILURES as exc:
                raise _failure("MFA verification", exc, _Stage.LOGIN, client) from None

    def refresh(self, tokens: GarminTokens) -> GarminTokens:
        # The exchange is done here rather than through Client.refresh_oauth2, so the result
        # is built from the OAuth1 we were given and the OAuth2 Garmin just issued.
        with _client_for_call(self._settings, tokens.domain) as client:
            try:
                fresh = garth.sso.exchange(_oauth1_to_garth(tokens.oauth1, tokens.domain), client)
                oauth2 = _oauth2_from_garth(fresh)
            except _GARTH_FAILURES as exc:
                raise _failure("token refresh", exc, _Stage.SESSION, client) from None
        return GarminTokens(oauth1=tokens.oauth1, oauth2=oauth2, domain=tokens.domain)

    def validate(self, tokens: GarminTokens, *, allow_refresh: bool) -> GarminTokens:
        current = tokens
        if allow_refresh and self._expiring(tokens.oauth2):
            current = self.refresh(tokens)
        try:
            self._fetch_profile(current)
        except _AccessTokenRejected:
            if not allow_refresh or current is not tokens:
                raise
            # Garmin refused an access token we believed valid (revoked, clock skew): only a
            # refused exchange proves the session itself dead.
            current = self.refresh(tokens)
            self._fetch_profile(current)
        return current

    def _expiring(self, token: OAuth2Token) -> bool:
        return (token.expires_at - self._clock.now()).total_seconds() <= EXPIRY_MARGIN_SECONDS

    def _fetch_profile(self, tokens: GarminTokens) -> None:
        # api=False with our own Authorization: with api=True garth would refresh an expired
        # token on its own, which validate(allow_refresh=False) must never do.
        with _client_for_call(self._settings, tokens.domain) as client:
            try:
                response = client.request(
                    "GET",
                    "connectapi",
                    PROFILE_PATH,
                    api=False,
                    headers={"Authorization": _bearer(tokens.oauth2)},
                )
                profile = response.json()
            except _GARTH_FAILURES as exc:
                raise _failure("validation", exc, _Stage.SESSION, client) from None
        if not isinstance(profile, dict):
            raise GarminUnavailable("Garmin answered something unreadable (Connect API)")


# --- Authenticated Connect API calls for the sync worker ---------------------------------------


def _check_api_path(path: str) -> None:
    """Refuse anything but a path: garth urljoin()s it, and an absolute URL there would carry
    the user's bearer token to another host."""
    if (
        not path.startswith("/")
        or path.startswith("//")
        or "\\" in path
        or any(ch in path for ch in "\r\n\t ")
    ):
        raise ValueError(
            "expected an absolute path on the Connect API, like /userprofile-service/..."
        )


class GarminApiSession:
    """Authenticated GETs on Garmin's Connect API as one user, for the sync worker.

    garth refreshes an expired access token on its own before a call; a 401 on a token
    believed valid triggers one refresh and one retry. After the session, ``current_tokens()``
    returns the refreshed tokens to store (None when nothing was refreshed).

    Not thread-safe: use one GarminApiSession per user per thread.
    """

    def __init__(self, tokens: GarminTokens, settings: UpstreamSettings) -> None:
        self._tokens = tokens
        self._settings = settings
        self._client = _IsolatedClient(settings, tokens.domain)
        self._initial_oauth2 = _oauth2_to_garth(tokens.oauth2, time.time())
        self._client.oauth1_token = _oauth1_to_garth(tokens.oauth1, tokens.domain)
        self._client.oauth2_token = self._initial_oauth2

    def __enter__(self) -> GarminApiSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a Connect API path and return its JSON (None for 204 No Content)."""
        response = self._get(path, params, "Connect API call")
        if response.status_code == HTTPStatus.NO_CONTENT:
            return None
        try:
            return response.json()
        except ValueError:
            raise GarminUnavailable("Garmin answered something unreadable (Connect API)") from None

    def download(self, path: str) -> bytes:
        """GET a Connect API path and return its body (e.g. an activity's zip)."""
        return self._get(path, None, "download").content

    @property
    def refreshed(self) -> bool:
        """Whether the access token was refreshed during the session (and OAuth1 is intact)."""
        oauth2 = self._client.oauth2_token
        return (
            isinstance(self._client.oauth1_token, GarthOAuth1Token)
            and isinstance(oauth2, GarthOAuth2Token)
            and oauth2 is not self._initial_oauth2
        )

    def current_tokens(self) -> GarminTokens | None:
        """The refreshed tokens to store, or None when nothing was refreshed."""
        oauth2 = self._client.oauth2_token
        if not self.refreshed or not isinstance(oauth2, GarthOAuth2Token):
            return None
        return GarminTokens(
            oauth1=self._tokens.oauth1,
            oauth2=_oauth2_from_garth(oauth2),
            domain=self._tokens.domain,
        )

    def _get(self, path: str, params: Mapping[str, Any] | None, operation: str) -> Response:
        _check_api_path(path)
        token_before = self._client.oauth2_token
        try:
            return self._send(path, params, operation)
        except _AccessTokenRejected:
            if self._client.oauth2_token is not token_before:
                raise  # refused a token Garmin issued moments ago, within this very call
            # Refused although not expired: only a refused exchange proves the session dead.
            self._refresh(operation)
            return self._send(path, params, operation)

    def _send(self, path: str, params: Mapping[str, Any] | None, operation: str) -> Response:
        with _consumer_of(self._settings):
            try:
                # headers={} every time: garth writes Authorization into its shared default.
                return self._client.request(
                    "GET", "connectapi", path, api=True, params=params, headers={}
                )
            except _GARTH_FAILURES as exc:
                raise _failure(operation, exc, _Stage.SESSION, self._client) from None

    def _refresh(self, operation: str) -> None:
        with _consumer_of(self._settings):
            try:
                self._client.refresh_oauth2()
            except _GARTH_FAILURES as exc:
                raise _failure(operation, exc, _Stage.SESSION, self._client) from None
