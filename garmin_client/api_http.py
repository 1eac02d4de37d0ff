"""The Connect API's GETs on urllib3's connection pool, without requests' Session.

A GET through requests' Session costs about twice urllib3's own work (a 10.7 KB page from a
local server, JSON parsed: 0.59-0.69 against 0.27-0.30 ms of CPU): merging the session's
settings, preparing the request, the cookie jar's request and response adapters, building the
response. The Connect API needs none of it beyond what is here, for an environment that names
no proxy (garmin_client.connect_api keeps requests' Session, and its proxy handling,
otherwise):

* the transport's rules (garmin_client.transport): our timeout, the one retry layer
  (garmin_client.retry), the observer, and every host routed to one base URL with the
  original host in X-Forwarded-Host;
* TLS verified against REQUESTS_CA_BUNDLE, else CURL_CA_BUNDLE, else certifi's bundle, as
  requests does;
* the headers requests adds (Accept, Accept-Encoding, Connection), so Garmin sees the same
  request, and gzip or deflate answers decoded;
* the cookies Garmin sets, kept for the client's later requests as requests' Session keeps
  them (http.cookiejar: domain, path, expiry), and dropped on forget_cookies().

With `call_seconds`, a GET (its retries and the answer's body included) ends within that
many seconds however slowly its answer trickles in, or as soon as `cancel` is set
(garmin_client.call_deadline): urllib3's read timeout bounds each read only.

Redirects are not followed: the API answers JSON, and a redirect is an answer we do not
understand (classified by its status: Unavailable), never a reason to send the bearer
elsewhere.
"""

from __future__ import annotations

import os
import threading
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar
from typing import Final

import certifi
import urllib3
from urllib3.exceptions import HTTPError, ProtocolError, ProxyError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError
from urllib3.util import make_headers

from garmin_client.answer_cap import READ_CHUNK_BYTES, read_capped
from garmin_client.call_deadline import WATCHED_POOLS, within
from garmin_client.observe import RequestObserver, observed
from garmin_client.retry import Attempts, RetryPolicy, Timeout, repeated
from garmin_client.settings import UpstreamSettings
from garmin_client.transport import routed_url

# What requests' Session adds to every request (requests.utils.default_headers, but for the
# User-Agent, which the caller always sets): the encodings urllib3 can decode, as requests
# asks for them.
SESSION_HEADERS: Final = {
    "Accept-Encoding": ", ".join(
        name.strip() for name in make_headers(accept_encoding=True)["accept-encoding"].split(",")
    ),
    "Accept": "*/*",
    "Connection": "keep-alive",
}
# A GET failing with one of these may be tried again (requests raises them as ConnectionError
# or Timeout, which garmin_client.retry repeats for a GET).
_REPEATABLE: Final = (Urllib3TimeoutError, ProtocolError, SSLError, ProxyError)


@dataclass(frozen=True)
class _Read:
    """An answer and its body, read whole (the connection back in the pool)."""

    response: urllib3.BaseHTTPResponse
    body: bytes


@dataclass(frozen=True)
class Answer:
    """Garmin's answer to a GET, read whole."""

    status: int
    headers: urllib3.HTTPHeaderDict
    body: bytes
    url: str  # the URL asked for (before any routing)


def ca_bundle() -> str:
    """Where TLS trust comes from: requests' rule, read once per client."""
    return (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    )


class ApiHttp:
    """GETs with our timeout, retries, observer and routing. Thread-safe (the pool and the
    cookie jar lock themselves)."""

    def __init__(
        self,
        settings: UpstreamSettings,
        observer: RequestObserver | None = None,
        *,
        call_seconds: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self._base = settings.base_url
        self._timeout = settings.timeout_seconds
        self._policy = RetryPolicy.of(settings)
        self._observer = observer
        self._call_seconds = call_seconds
        self._cancel = cancel
        # No urllib3 retries or redirects: `repeated` is the only layer that repeats a request.
        self._pool = urllib3.PoolManager(
            retries=False, cert_reqs="CERT_REQUIRED", ca_certs=ca_bundle()
        )
        # Its connections show their sockets to the call's deadline (none: they need not).
        self._pool.pool_classes_by_scheme = WATCHED_POOLS
        self.cookies = CookieJar()

    def close(self) -> None:
        self._pool.clear()

    def get(self, url: str, headers: dict[str, str]) -> Answer:
        """GET `url`: Garmin's last answer (any status), or the last failure raised
        (a urllib3 HTTPError)."""
        sent = {**SESSION_HEADERS, **headers}
        target = url
        if self._base is not None:
            target, sent["X-Forwarded-Host"] = routed_url(self._base, url)
        # The jar matches cookies to the URL asked for, as requests' does.
        asked = urllib.request.Request(url)  # noqa: S310 - never opened: the jar reads it
        self.cookies.add_cookie_header(asked)
        cookie = asked.get_header("Cookie")
        if cookie is not None:
            sent["Cookie"] = cookie

        def send_once(timeout: Timeout) -> _Read:
            response = self._pool.request(
                "GET",
                target,
                headers=sent,
                timeout=_urllib3_timeout(timeout),
                redirect=False,
                preload_content=False,
            )
            try:
                return _Read(response, read_capped(response.stream(READ_CHUNK_BYTES)))
            except BaseException:
                # Not read to its end (too large, undecodable, cut): the connection still
                # holds the rest, which the next GET on it would read as its own answer.
                response.close()
                raise
            finally:
                response.release_conn()

        def send() -> _Read:
            return within(
                self._call_seconds,
                self._cancel,
                lambda: repeated("GET", url, send_once, self._policy, self._timeout, _ATTEMPTS),
                lambda: Urllib3TimeoutError(
                    f"no whole answer from Garmin within {self._call_seconds} s"
                ),
            )

        read = observed(self._observer, url, send, lambda answer: answer.response.status)
        self.cookies.extract_cookies(_CookieSource(read.response.headers), asked)  # type: ignore[arg-type]
        return Answer(read.response.status, read.response.headers, read.body, url)


_ATTEMPTS: Final = Attempts[_Read, HTTPError](
    failures=HTTPError,
    may_repeat=lambda exc: isinstance(exc, _REPEATABLE),
    status=lambda answer: answer.response.status,
    discard=lambda _answer: None,  # read and released already
)


class _CookieSource:
    """What http.cookiejar reads of a response: its headers, by info()."""

    def __init__(self, headers: urllib3.HTTPHeaderDict) -> None:
        self._headers = headers

    def info(self) -> urllib3.HTTPHeaderDict:
        return self._headers


def _urllib3_timeout(timeout: Timeout) -> urllib3.Timeout:
    if isinstance(timeout, tuple):
        return urllib3.Timeout(connect=timeout[0], read=timeout[1])
    return urllib3.Timeout(connect=timeout, read=timeout)
