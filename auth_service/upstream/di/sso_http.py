"""How the DI provider sends its SSO calls: JSON POSTs to sso.garmin.com with a browser-like
TLS handshake (curl_cffi impersonating GARMIN_AUTH_DI_IMPERSONATE), because Cloudflare
fingerprints TLS there and blocks plain Python clients more often; or, where configured
(GARMIN_AUTH_DI_PLAIN_HTTP), with plain requests through garmin_client's transport.

Both route every host to GARMIN_AUTH_UPSTREAM_URL by garmin_client.transport's rule and report
each request to the observer. Neither repeats a login or MFA POST: one that reached Garmin
may have taken effect (an MFA code spent, a ticket issued).

Cookies never go through a cookie jar: the pending MFA login must travel to another replica,
so the provider reads the Set-Cookie headers of each answer and sends them back explicitly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import requests
from curl_cffi import CurlECode
from curl_cffi import requests as curl_requests
from curl_cffi.requests.exceptions import ConnectTimeout as CurlConnectTimeout
from curl_cffi.requests.exceptions import DNSError, ProxyError
from curl_cffi.requests.exceptions import RequestException as CurlRequestException
from curl_cffi.requests.exceptions import Timeout as CurlTimeout

from auth_service.domain.errors import GarminUnavailable
from garmin_client.answer_cap import MAX_AUTH_ANSWER_BYTES, AnswerTooLarge
from garmin_client.http_session import upstream_session
from garmin_client.observe import RequestObserver, endpoint_template, status_outcome
from garmin_client.retry import never_sent
from garmin_client.settings import UpstreamSettings
from garmin_client.transport import UpstreamTransport, routed_url

log = logging.getLogger(__name__)

# The iOS app's web view, as the facts file records it.
SSO_HEADERS: Final = {
    "User-Agent": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_7 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Mobile/15E148"
    ),
    "Content-Type": "application/json",
    "Accept": "application/json, text/plain, */*",
    "Origin": "https://sso.garmin.com",
}


@dataclass(frozen=True, repr=False)
class SsoAnswer:
    """Garmin's answer to one SSO call. Secret (cookies): the repr shows the status only."""

    status: int
    path: str
    payload: Any
    retry_after: str | None
    cookies: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SsoAnswer(status={self.status}, path={self.path!r})"


def _json(body: bytes) -> Any:
    """The answer's JSON, or None. Read from the bytes, never from a decoded text: JSON is
    UTF-8, and decoding by the charset the answer names fails on a label Python does not know
    (a blocked page's `charset=utf8mb4`), which must still be judged by its status."""
    try:
        return json.loads(body)
    # UnicodeDecodeError too; RecursionError: nested deeper than the parser's stack.
    except (ValueError, RecursionError):
        return None


# curl's codes for a request that never left: no name, no proxy, no connection.
_NOT_CONNECTED = frozenset(
    {CurlECode.COULDNT_RESOLVE_HOST, CurlECode.COULDNT_RESOLVE_PROXY, CurlECode.COULDNT_CONNECT}
)


def _never_sent(exc: CurlRequestException) -> bool:
    """Whether curl failed before a connection existed (Garmin cannot have seen the request).
    Anything else counts as sent: an MFA code then counts as judged."""
    if isinstance(exc, CurlConnectTimeout | DNSError | ProxyError):
        return True
    if getattr(exc, "code", None) in _NOT_CONNECTED:
        return True
    # curl reports both timeouts as code 28 and curl_cffi raises a plain Timeout for it; the
    # connect phase's message is curl's "Connection timed out after ... milliseconds" (a
    # transfer's is "Operation timed out ...").
    return getattr(exc, "code", None) == CurlECode.OPERATION_TIMEDOUT and str(exc).startswith(
        "Failed to perform, curl: (28) Connection timed out"
    )


def _cookie_pair(header: str) -> tuple[str, str] | None:
    name, sep, value = header.split(";", 1)[0].partition("=")
    return (name.strip(), value.strip()) if sep and name.strip() else None


def _cookie_header(cookies: Mapping[str, str]) -> dict[str, str]:
    """The Cookie header of the cookies Garmin set that a header can carry back. A name or
    value outside RFC 6265's cookie-octets (UTF-8 decoded by curl, say) would make the HTTP
    client refuse to send the request (UnicodeEncodeError: an INTERNAL on every SubmitMfa):
    left out, Garmin judges the request without it."""
    sendable = [f"{k}={v}" for k, v in cookies.items() if _cookie_octets(k) and _cookie_octets(v)]
    return {"Cookie": "; ".join(sendable)} if sendable else {}


# RFC 6265's cookie-octet: visible ASCII but for these.
_COOKIE_OCTETS = frozenset(chr(code) for code in range(0x21, 0x7F)) - set('",;\\')


def _cookie_octets(text: str) -> bool:
    """Whether `text` is cookie-octets only (empty too)."""
    return all(char in _COOKIE_OCTETS for char in text)


class _CappedBody:
    """curl's content callback: the body's pieces, AnswerTooLarge once they pass `limit`
    (raised inside curl's transfer, which stops it; curl_cffi raises it from the call)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def __call__(self, piece: bytes) -> int:
        self._size += len(piece)
        if self._size > self._limit:
            raise AnswerTooLarge(self._limit)
        self._parts.append(piece)
        return len(piece)

    def body(self) -> bytes:
        return b"".join(self._parts)


def _too_large(exc: AnswerTooLarge) -> GarminUnavailable:
    # Garmin answered: a login or MFA code it may have acted on counts as judged.
    log.warning("garmin sign-in answered a body %s, not read", exc)
    return GarminUnavailable(f"Garmin's answer was {exc}, not read (sign-in)", unanswered=True)


class SsoHttp:
    """Sends the SSO calls; raises GarminUnavailable when no answer came."""

    def __init__(
        self,
        upstream: UpstreamSettings,
        *,
        impersonate: str,
        plain_http: bool,
        observer: RequestObserver | None,
    ) -> None:
        self._upstream = upstream
        self._impersonate = impersonate
        self._plain_http = plain_http
        self._observer = observer

    def post_json(
        self,
        url: str,
        params: Mapping[str, str],
        body: Mapping[str, Any],
        cookies: Mapping[str, str],
    ) -> SsoAnswer:
        full = f"{url}?{urlencode(params)}"
        headers = {**SSO_HEADERS, **_cookie_header(cookies)}
        if self._plain_http:
            return self._post_plain(full, headers, body)
        return self._post_impersonating(full, headers, body)

    def _post_plain(self, url: str, headers: dict[str, str], body: Mapping[str, Any]) -> SsoAnswer:
        # Capped (MAX_AUTH_ANSWER_BYTES): an SSO answer is a few KB of JSON.
        transport = UpstreamTransport(
            self._upstream, self._observer, max_answer_bytes=MAX_AUTH_ANSWER_BYTES
        )
        with upstream_session() as session:
            session.mount("https://", transport)
            try:
                response = session.post(
                    url,
                    data=json.dumps(body),
                    headers=headers,
                    timeout=self._upstream.timeout_seconds,
                    # A 307 or 308 would send the password (or the code) on to its Location.
                    allow_redirects=False,
                )
            except requests.Timeout as exc:
                raise GarminUnavailable(
                    "Garmin did not answer in time (sign-in)", unanswered=not never_sent(exc)
                ) from None
            except requests.RequestException as exc:
                raise GarminUnavailable(
                    "Garmin could not be reached (sign-in)", unanswered=not never_sent(exc)
                ) from None
            except AnswerTooLarge as exc:
                raise _too_large(exc) from None
            return SsoAnswer(
                status=response.status_code,
                path=urlsplit(url).path,
                payload=_json(response.content),
                retry_after=response.headers.get("Retry-After"),
                cookies={cookie.name: cookie.value or "" for cookie in response.cookies},
            )

    def _post_impersonating(
        self, url: str, headers: dict[str, str], body: Mapping[str, Any]
    ) -> SsoAnswer:
        target = url
        if self._upstream.base_url is not None:
            target, headers["X-Forwarded-Host"] = routed_url(self._upstream.base_url, url)
        started, outcome = time.perf_counter(), "error"
        # curl hands the body over decoded, a piece at a time: kept only up to the cap.
        received = _CappedBody(MAX_AUTH_ANSWER_BYTES)
        try:
            with curl_requests.Session(impersonate=self._impersonate) as session:
                response = session.post(
                    target,
                    data=json.dumps(body),
                    headers=headers,
                    timeout=self._upstream.timeout_seconds,
                    allow_redirects=False,
                    content_callback=received,
                )
            outcome = status_outcome(response.status_code)
        except AnswerTooLarge as exc:  # raised by `received`: curl stopped the transfer
            raise _too_large(exc) from None
        except CurlTimeout as exc:
            outcome = "timeout"
            raise GarminUnavailable(
                "Garmin did not answer in time (sign-in)", unanswered=not _never_sent(exc)
            ) from None
        except CurlRequestException as exc:
            log.warning("garmin sign-in failed: %s", type(exc).__name__)
            raise GarminUnavailable(
                "Garmin could not be reached (sign-in)", unanswered=not _never_sent(exc)
            ) from None
        finally:
            if self._observer is not None:
                self._observer.upstream_call(
                    endpoint_template(url), outcome, time.perf_counter() - started
                )
        pairs = (_cookie_pair(h) for h in response.headers.get_list("set-cookie"))
        return SsoAnswer(
            status=response.status_code,
            path=urlsplit(url).path,
            payload=_json(received.body()),
            retry_after=response.headers.get("Retry-After"),
            cookies=dict(pair for pair in pairs if pair is not None),
        )
