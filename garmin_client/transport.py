"""The HTTP adapter every requests-based call to Garmin goes through (mounted on https:// of
each client): our timeout, the one retry layer, the observer, and the optional routing of
every Garmin host to one base URL (GARMIN_AUTH_UPSTREAM_URL / GARMIN_SYNC_UPSTREAM_URL, e.g.
the emulator). The Connect API's GETs on urllib3 (garmin_client.api_http) keep the same rules.

With `whole_call_deadline` (the service's sign-in, ticket and refresh calls), a call ends
within its retry budget (timeout x attempts) as a whole, its answer's body read included
(garmin_client.call_deadline): claims are sized on that promise (a refresh claim outlives one
call), and an answer that trickles in a byte at a time, each within the read timeout, would
otherwise outlive the claim while another replica sends the same refresh token. The Connect
API client leaves it off here and applies its own around the body's read, which it does
itself (garmin_client.connect_api: a bound of the caller's; the worker's
GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT, generous enough for a large download that arrives steadily,
and GetStatus(validate)'s retry budget for its profile GET).

With `max_answer_bytes` (the service's sign-in, ticket and refresh calls: their answers are a
few KB) a body is read in chunks and decoded no further than that, under the same deadline:
past it the call raises AnswerTooLarge (garmin_client.answer_cap), so a gzip bomb costs the
cap, not what it inflates to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.models import PreparedRequest, Response
from requests.utils import should_bypass_proxies

from garmin_client.answer_cap import AnswerTooLarge, read_capped
from garmin_client.call_deadline import CallDeadline, DeadlineAdapter
from garmin_client.observe import RequestObserver, observed
from garmin_client.retry import RetryPolicy, Timeout, never_sent, send_with_retries
from garmin_client.settings import UpstreamSettings


def routed_url(base_url: str, url: str) -> tuple[str, str]:
    """Where a request for `url` goes when every Garmin host is routed to `base_url`, and the
    original host to tell the receiver (X-Forwarded-Host): path and query are kept.

    The one routing rule: this transport and the DI provider's SSO client both use it."""
    base, original = urlsplit(base_url), urlsplit(url)
    routed = urlunsplit(
        (base.scheme, base.netloc, base.path.rstrip("/") + original.path, original.query, "")
    )
    return routed, original.netloc


# Requests whose redirects a session may follow: they carry no body.
_FOLLOWED = frozenset({"GET", "HEAD"})


class UpstreamTransport(DeadlineAdapter):
    """Sends with our timeout and retries, reports to the observer, routes to the base URL.

    With a base URL it sends https://<host>/<path>?<query> to <base>/<path>?<query>, telling
    the receiver the original host in X-Forwarded-Host so it can check OAuth1 signatures,
    which cover the original URL. Callers see the URL they asked for on the response.
    """

    def __init__(
        self,
        settings: UpstreamSettings,
        observer: RequestObserver | None = None,
        *,
        whole_call_deadline: bool = True,
        max_answer_bytes: int | None = None,
    ) -> None:
        # No urllib3 retries: send_with_retries is the only layer that repeats a request.
        super().__init__(max_retries=0)
        self._base = settings.base_url
        self._timeout = settings.timeout_seconds
        self._policy = RetryPolicy.of(settings)
        self._observer = observer
        self._whole_call_deadline = whole_call_deadline
        self._max_answer_bytes = max_answer_bytes

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        routed = request if self._base is None else self._routed(request)
        if routed is not request and proxies and should_bypass_proxies(routed.url or "", None):
            # The session chose proxies for the original host, not for the base URL's.
            proxies = {}

        limit = None if stream else self._max_answer_bytes

        def send_once(attempt_timeout: Timeout) -> Response:
            # Capped: streamed, so the body is read here in chunks, never whole by requests.
            return super(UpstreamTransport, self).send(
                routed, stream or limit is not None, attempt_timeout, verify, cert, proxies
            )

        budget = self._policy.budget_seconds
        deadline = CallDeadline(budget) if self._whole_call_deadline else None

        def send_and_read() -> Response:
            try:
                answer = send_with_retries(
                    routed, send_once, self._policy, self._timeout if timeout is None else timeout
                )
                if limit is not None:
                    _read_capped(answer, limit)
                elif not stream:
                    # Read here, under the deadline: the session would read it after we return.
                    answer.content  # noqa: B018
            except requests.RequestException as exc:
                # A connection never made stays what it is: nothing reached Garmin (an MFA
                # code is not counted as judged), whatever the deadline did meanwhile.
                if deadline is not None and deadline.expired and not never_sent(exc):
                    raise _timed_out(budget) from None
                raise
            if deadline is not None and deadline.expired:
                # A body whose end is the connection's close reads as whole when cut short.
                raise _timed_out(budget)
            return answer

        # The observer sees the call's outcome as the caller will: a cut call timed out.
        with deadline or contextlib.nullcontext():
            response = observed(
                self._observer,
                request.url or "",
                send_and_read,
                lambda response: response.status_code,
            )
        if routed is not request:
            # Callers (garth, our classifier, cookie handling) must see the URL they asked for.
            response.url = request.url or ""
            response.request = request
        if response.is_redirect and (request.method or "GET").upper() not in _FOLLOWED:
            # A 307 or 308 would have the session send the body (a password, an MFA code, a
            # token; re-signed, for OAuth1) on to its Location, and whatever answers there
            # would be read as Garmin. Sessions we do not build (garth's OAuth1 exchange)
            # follow redirects by default: without a Location none does. The caller reads
            # an answer it does not expect: Garmin unavailable.
            del response.headers["Location"]
        return response

    def _routed(self, request: PreparedRequest) -> PreparedRequest:
        assert self._base is not None
        routed = request.copy()
        routed.url, routed.headers["X-Forwarded-Host"] = routed_url(self._base, request.url or "")
        return routed


# How much of a capped body is read (and decoded) at a time.
_CAPPED_CHUNK_BYTES = 64 * 1024


def _read_capped(answer: Response, limit: int) -> None:
    """Read `answer`'s body as requests' `content` does, but no more than `limit` bytes
    decoded (AnswerTooLarge past it); the caller then finds it read, as without a cap."""
    try:
        body = read_capped(answer.iter_content(_CAPPED_CHUNK_BYTES), limit)
    except AnswerTooLarge:
        answer.close()  # the rest stays unread on a connection never reused
        # With its status: a caller may need to know what it could not read (a rotation).
        raise AnswerTooLarge(limit, status=answer.status_code) from None
    except BaseException:
        # Not read to its end: the connection still holds the rest, never to be reused.
        answer.close()
        raise
    # Where `content` keeps the body it read (iter_content marked the stream consumed).
    answer._content = body


def _timed_out(budget: float) -> requests.Timeout:
    return requests.Timeout(f"no answer from Garmin within {budget:g} s")
