"""garth 0.8.0, defused. The only module that imports garth: everything else reaches garth's
names through this one, so garth is never imported with our environment visible.

The traps, and what defuses them:

* ``import garth`` builds a module-global client that reads ``GARTH_HOME``/``GARTH_TOKEN``
  (and ``GARTH_TELEMETRY_*``) from the environment: garth is imported with those variables
  hidden, and every call uses its own ``IsolatedClient`` that reads nothing from the
  environment, writes no files and sends no telemetry.
* ``garth.sso.OAUTH_CONSUMER`` is downloaded from S3 when empty: it is replaced by a mapping
  that is never empty and answers the consumer of the settings of the call in progress.
* ``Client.configure()`` mounts garth's own retrying adapter: ours (garmin_client.transport)
  is mounted again after every configure, so our retries, timeout and routing apply to every
  request, OAuth1-signed ones included.
* ``Client.request`` has a shared mutable ``headers={}`` default into which it writes the
  Authorization header: every caller passes a fresh dict.
* ``Client.refresh_oauth2`` forgets the OAuth1 token when an exchange fails: the isolated
  client never does.
* ``sso.login``/``resume_login`` load the SSO's embed page "best-effort" once Garmin issued the
  ticket, swallowing garth's HTTP errors there, a 429 included: the isolated client keeps each
  429 it was answered (``rate_limited``) for the caller to honour, and turns a lost answer of
  that page (a timeout, a reset) into the error garth swallows, so it no longer costs the
  sign-in its ticket.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any, Final

import requests
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from garmin_client.answer_cap import MAX_AUTH_ANSWER_BYTES, AnswerTooLarge
from garmin_client.endpoints import EMBED_PATH
from garmin_client.http_session import upstream_session
from garmin_client.observe import RequestObserver
from garmin_client.settings import UpstreamSettings
from garmin_client.transport import UpstreamTransport

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
    from garth.utils import asdict as _untyped_asdict

__all__ = [
    "GARTH_FAILURES",
    "GarthException",
    "GarthHTTPError",
    "GarthOAuth1Token",
    "GarthOAuth2Token",
    "IsolatedClient",
    "client_for_call",
    "consumer_of",
    "garth",
    "garth_asdict",
]

# What Client.dumps() serializes with; garth leaves it unannotated.
garth_asdict: Callable[[object], Any] = _untyped_asdict

# What garth and requests raise when Garmin misbehaves. RequestException is an OSError;
# ValueError covers JSON decoding and pydantic validation; KeyError/TypeError/AttributeError
# come from garth reading answers that lack a field or have the wrong shape; RecursionError
# from JSON nested deeper than the parser can follow (a broken or hostile answer);
# AnswerTooLarge from our transport's cap, which garth lets through as it is.
GARTH_FAILURES: Final = (
    AnswerTooLarge,
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
def consumer_of(settings: UpstreamSettings) -> Iterator[None]:
    """Make garth sign with the settings' consumer for the duration of the block."""
    if garth.sso.OAUTH_CONSUMER is not _CONSUMER:
        # Something replaced garth's global since import: put ours back before any garth call.
        garth.sso.OAUTH_CONSUMER = _CONSUMER
    token = _ACTIVE_CONSUMER.set((settings.consumer_key, settings.consumer_secret))
    try:
        yield
    finally:
        _ACTIVE_CONSUMER.reset(token)


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


class IsolatedClient(garth.Client):
    """A garth.Client for one call.

    Reads nothing from the environment, writes no files, sends no telemetry, and sends
    every request through UpstreamTransport.
    """

    def __init__(
        self, settings: UpstreamSettings, domain: str, observer: RequestObserver | None = None
    ) -> None:
        # Deliberately not garth.Client.__init__: it builds a Telemetry from GARTH_TELEMETRY_*,
        # may print, and _auto_resume()s from GARTH_HOME/GARTH_TOKEN.
        # Every answer garth asks for (sign-in, exchange, profile) is a few KB: capped, so a
        # gzip bomb costs the cap, not what it inflates to (garmin_client.answer_cap).
        self._transport = UpstreamTransport(
            settings, observer, max_answer_bytes=MAX_AUTH_ANSWER_BYTES
        )
        # No redirect of a POST is followed (our transport drops its Location: garth leaves
        # allow_redirects on), and no netrc credentials replace the Authorization we set.
        self.sess = upstream_session()
        self.sess.headers.update(garth.http.USER_AGENT)
        self.telemetry = _NoTelemetry(enabled=False)
        # Every 429 Garmin answered this client: all but the one a failed call raises are
        # those garth went on past (the embed page's; auth_service.upstream.garth.sso).
        self.rate_limited: list[GarthHTTPError] = []
        self.configure(domain=domain)
        # requests takes float timeouts; garth annotates int.
        self.timeout = settings.timeout_seconds  # type: ignore[assignment]

    def configure(self, *args: Any, **kwargs: Any) -> None:
        kwargs["telemetry_enabled"] = False
        super().configure(*args, **kwargs)
        # configure() just mounted garth's own retrying adapter: ours decides.
        self.sess.mount("https://", self._transport)

    def request(
        self, method: str, subdomain: str, path: str, /, *args: Any, **kwargs: Any
    ) -> requests.Response:
        try:
            return super().request(method, subdomain, path, *args, **kwargs)
        except GarthHTTPError as exc:
            answer = exc.error.response
            if answer is not None and answer.status_code == HTTPStatus.TOO_MANY_REQUESTS:
                self.rate_limited.append(exc)
            raise
        except requests.RequestException as exc:
            if path != EMBED_PATH:
                raise
            # The best-effort page load: no answer fails it as an HTTP error would.
            raise GarthException(msg=f"SSO page load failed: {type(exc).__name__}") from None

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
def client_for_call(
    settings: UpstreamSettings, domain: str, observer: RequestObserver | None = None
) -> Iterator[IsolatedClient]:
    """A fresh isolated client signing with the settings' consumer, closed afterwards."""
    client = IsolatedClient(settings, domain, observer)
    try:
        with consumer_of(settings):
            yield client
    finally:
        client.close()
