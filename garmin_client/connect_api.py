"""GETs on Garmin's Connect API with an access token only (no garth, nothing long-lived).

The sync worker holds a lease's access token and nothing that outlives it (issue 13): it sends
the token as a bearer with the mobile app's headers to connectapi.<domain>, with the
transport's rules (routing, timeout, retries, observer): on urllib3 (garmin_client.api_http),
or through requests' Session when the environment names a proxy. Raises only
garmin_client.errors: a 401 is AccessTokenRejected (the holder may ask the service for a fresh
token), 429 RateLimited, the rest Unavailable. Messages never contain the token.

With `call_seconds` (the worker's GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT) a GET, its retries and the
answer's body included, ends within that bound, never shorter than its retry budget (timeout x
attempts), however slowly the answer trickles in (urllib3 and requests time each read only),
and at once when `cancel` is set (the worker's stop): it then fails as Garmin not answering in
time (Unavailable), never as a rejected session. The bound is generous, so that a large
download arriving steadily is no failure.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from http import HTTPStatus
from http.cookiejar import CookieJar
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlencode
from urllib.request import getproxies

import requests
from urllib3.exceptions import HTTPError

from garmin_client.answer_cap import READ_CHUNK_BYTES, AnswerTooLarge, read_capped
from garmin_client.answers import answer_failure, failure
from garmin_client.api_http import ApiHttp
from garmin_client.call_deadline import within
from garmin_client.endpoints import DOMAINS
from garmin_client.errors import FileTooLarge, GarminError, NotFound, Unavailable
from garmin_client.http_session import upstream_session
from garmin_client.observe import RequestObserver, observed
from garmin_client.retry import RetryPolicy
from garmin_client.settings import UpstreamSettings
from garmin_client.transport import UpstreamTransport

# What Garmin Connect's Android app sends with every API call (docs: garmin-di-auth.md).
APP_HEADERS: Final = {
    "User-Agent": "GCM-Android-5.23",
    "X-Garmin-User-Agent": (
        "com.garmin.android.apps.connectmobile/5.23; ; Google/sdk_gphone64_arm64/google; "
        "Android/33; Dalvik/2.1.0"
    ),
    "X-Garmin-Paired-App-Version": "10861",
    "X-Garmin-Client-Platform": "Android",
    "X-App-Ver": "10861",
    "X-Lang": "en",
    "X-GCExperience": "GC5",
}


def check_api_path(path: str) -> None:
    """Refuse anything but a path: an absolute URL would carry the bearer to another host."""
    if (
        not path.startswith("/")
        or path.startswith("//")
        or "\\" in path
        or any(ch in path for ch in "\r\n\t ")
    ):
        raise ValueError(
            "expected an absolute path on the Connect API, like /userprofile-service/..."
        )


class ConnectApi:
    """One HTTP client of connectapi.<domain>. Thread-safe for GETs; the worker keeps one per
    sync thread (sync_worker.connect_apis).

    On urllib3's pool (garmin_client.api_http) unless the environment names a proxy: then on
    requests' Session, which reads the proxy variables (and NO_PROXY) per request."""

    def __init__(
        self,
        settings: UpstreamSettings,
        domain: str,
        observer: RequestObserver | None = None,
        *,
        now: Callable[[], datetime] | None = None,
        call_seconds: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """`now`: the clock a Retry-After date is measured on; give the one the wait is kept
        on (the service: the database's). Default: this machine's (the worker's pause).
        `call_seconds`, `cancel`: the whole-call bound (None: none) and what ends a call
        early (the module's docstring)."""
        if domain not in DOMAINS:
            raise ValueError("unknown Garmin domain")
        self._now = now
        self._base = f"https://connectapi.{domain}"
        self._timeout = settings.timeout_seconds
        if call_seconds is not None:
            # Never cut the retries the settings allow: they are bounded by the budget.
            call_seconds = max(call_seconds, RetryPolicy.of(settings).budget_seconds)
        self._call_seconds = call_seconds
        self._cancel = cancel
        self._http: ApiHttp | None = None
        self._session: requests.Session | None = None
        self._observer = observer
        if _proxies_named():
            # requests reads the proxy variables, NO_PROXY and netrc per request.
            self._session = upstream_session()
            # The whole-call deadline and the observer are applied here, around the body's
            # read too (_get_through_session): the session reads it after the transport.
            self._session.mount(
                "https://", UpstreamTransport(settings, None, whole_call_deadline=False)
            )
        else:
            self._http = ApiHttp(settings, observer, call_seconds=call_seconds, cancel=cancel)

    def __enter__(self) -> ConnectApi:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._session is not None:
            self._session.close()

    @property
    def cookies(self) -> CookieJar:
        """The cookies Garmin set, sent with this client's later requests."""
        if self._http is not None:
            return self._http.cookies
        assert self._session is not None
        return self._session.cookies

    def forget_cookies(self) -> None:
        """Drop the cookies Garmin set: the next caller's requests must not carry them."""
        self.cookies.clear()

    def get_json(
        self, path: str, access_token: str, params: Mapping[str, Any] | None = None
    ) -> Any:
        """GET a Connect API path and return its JSON (None for 204 No Content)."""
        status, body = self._get(path, access_token, params, "Connect API call")
        if status == HTTPStatus.NO_CONTENT:
            return None
        try:
            return _parsed(body)
        # RecursionError: nested deeper than Python's stack (about 1000 levels).
        except (ValueError, RecursionError):
            raise Unavailable("Garmin answered something unreadable (Connect API)") from None

    def download(self, path: str, access_token: str) -> bytes:
        """GET a Connect API path and return its body (e.g. an activity's zip)."""
        return self._get(path, access_token, None, "download")[1]

    def _get(
        self,
        path: str,
        access_token: str,
        params: Mapping[str, Any] | None,
        operation: str,
    ) -> tuple[int, bytes]:
        check_api_path(path)
        headers = {**APP_HEADERS, "Authorization": f"Bearer {access_token}"}
        if self._http is None:
            return self._get_through_session(path, headers, params, operation)
        url = self._base + path + _query(path, params)
        try:
            answer = self._http.get(url, headers)
        except HTTPError as exc:
            raise failure(operation, exc, judging_tokens=True, now=self._clock_now()) from None
        except AnswerTooLarge as exc:
            raise _too_large(operation, exc) from None
        self._check_status(operation, answer.status, answer.url, answer.headers)
        return answer.status, answer.body

    def _get_through_session(
        self,
        path: str,
        headers: dict[str, str],
        params: Mapping[str, Any] | None,
        operation: str,
    ) -> tuple[int, bytes]:
        session = self._session
        assert session is not None
        url = self._base + path

        def fetch() -> tuple[requests.Response, bytes]:
            return within(
                self._call_seconds,
                self._cancel,
                send_and_read,
                lambda: requests.Timeout(
                    f"no whole answer from Garmin within {self._call_seconds} s"
                ),
            )

        def send_and_read() -> tuple[requests.Response, bytes]:
            # Streamed, so a body past MAX_ANSWER_BYTES is never read whole; read here, so
            # the observer sees a body that could not be read as the failure it is.
            # Redirects not followed, as on urllib3: the session would send the bearer on
            # to the Location and read whatever answers there as Garmin's.
            with session.get(
                url,
                params=params,
                headers=headers,
                timeout=self._timeout,
                stream=True,
                allow_redirects=False,
            ) as response:
                return response, read_capped(response.iter_content(READ_CHUNK_BYTES))

        try:
            response, body = observed(
                self._observer, url, fetch, lambda answer: answer[0].status_code
            )
        except requests.RequestException as exc:
            raise failure(operation, exc, judging_tokens=True, now=self._clock_now()) from None
        except AnswerTooLarge as exc:
            raise _too_large(operation, exc) from None
        self._check_status(operation, response.status_code, url, response.headers)
        return response.status_code, body

    def _check_status(
        self, operation: str, status: int, url: str, headers: Mapping[str, str]
    ) -> None:
        """Anything but a 2xx is a failure, classified by its status (a redirect too: not
        followed, Garmin unavailable), on either path."""
        if HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES:
            return
        _raise_if_no_file(operation, status)
        raise answer_failure(
            operation,
            status,
            url,
            headers.get("Retry-After"),
            judging_tokens=True,
            now=self._clock_now(),
        )

    def _clock_now(self) -> datetime | None:
        return None if self._now is None else self._now()


def _too_large(operation: str, exc: AnswerTooLarge) -> GarminError:
    if operation == "download":
        # One activity's file: the sync goes on without it, as for an activity with none.
        return FileTooLarge(f"Garmin's file is {exc}: not downloaded")
    return Unavailable(f"Garmin's answer ({operation}) was {exc}: not read")


# What a download answers for a file that does not exist: a definite answer, not an outage.
_NO_FILE_STATUSES = frozenset({HTTPStatus.NOT_FOUND, HTTPStatus.GONE})


def _raise_if_no_file(operation: str, status: int) -> None:
    if operation == "download" and status in _NO_FILE_STATUSES:
        raise NotFound(f"Garmin has no such file (HTTP {status} on the download)")


def _proxies_named() -> bool:
    """Whether the environment names a proxy (NO_PROXY alone names none)."""
    return any(scheme != "no" for scheme in getproxies())


def _query(path: str, params: Mapping[str, Any] | None) -> str:
    """The query string requests would append for `params` (None values left out, a list as
    the key repeated)."""
    if not params:
        return ""
    pairs = [
        (key, item)
        for key, value in params.items()
        for item in (value if isinstance(value, list | tuple) else [value])
        if item is not None
    ]
    if not pairs:
        return ""
    return ("&" if "?" in path else "?") + urlencode(pairs)


def _parsed(body: bytes) -> Any:
    """Garmin's JSON. An integer longer than Python reads from text (4300 digits) is read as
    a float (an infinity, which the sinks store as null) rather than refusing the whole
    answer: one odd summary failed its user's page, on every run, as if Garmin were down.
    Parsed again only then, so the usual answer costs no hook per number."""
    try:
        return json.loads(body)
    except ValueError as exc:
        if "digits" not in str(exc):
            raise
    return json.loads(body, parse_int=_int_or_float)


def _int_or_float(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)
