"""The one retry layer for requests to Garmin, bounded in attempts and in time.

The transport (garmin_client.transport) sends every request through `send_with_retries`;
nothing above it (garth, the providers, the worker) retries a failure again, so one failing
GET costs at most `retries + 1` HTTP requests and `(retries + 1) * timeout` seconds, backoff
included.

What is repeated:
* a GET answered 408 or 5xx, or failing on the network (reset, timeout): GETs change nothing;
* any request whose connection was never made (refused, connect timeout): Garmin never saw it.

What never is:
* a 429: Garmin asked us to wait, possibly for an hour; the caller honours Retry-After;
* a POST (login, MFA code, token exchange) that may have reached Garmin: it may have taken
  effect, and a repeated MFA code or exchange can burn the user's challenge or token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import requests
from urllib3.exceptions import NewConnectionError

from garmin_client.call_deadline import call_expired
from garmin_client.observe import endpoint_template
from garmin_client.settings import UpstreamSettings

log = logging.getLogger(__name__)

# Passing failures: a timeout, an error, a gateway that lost or waited for Garmin, and
# Cloudflare's 520-524 (its edge in front of Garmin: unknown error, Garmin down, connection
# timed out, unreachable, a timeout). 501 and 505 would answer the same again.
RETRY_STATUSES: Final = frozenset({408, 500, 502, 503, 504, 520, 521, 522, 523, 524})
# The first repeat waits this long, each further one twice as long as the one before.
BACKOFF_SECONDS: Final = 0.2
# An attempt given less time than this would only time out: the call gives up instead.
MIN_ATTEMPT_SECONDS: Final = 0.1

Timeout = float | tuple[float, float] | None
AnswerT = TypeVar("AnswerT")
FailureT = TypeVar("FailureT", bound=Exception)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per request (the first included) and the time they may take together."""

    attempts: int
    timeout_seconds: float
    backoff_seconds: float = BACKOFF_SECONDS

    @classmethod
    def of(cls, settings: UpstreamSettings) -> RetryPolicy:
        return cls(attempts=settings.retries + 1, timeout_seconds=settings.timeout_seconds)

    @property
    def budget_seconds(self) -> float:
        return self.timeout_seconds * self.attempts

    def delay_before(self, attempt: int) -> float:
        """The wait before attempt number `attempt` (2 for the first repeat)."""
        return self.backoff_seconds * 2.0 ** (attempt - 2)


def never_sent(exc: requests.RequestException) -> bool:
    """Whether the request failed before a connection existed (Garmin cannot have seen it)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    # requests wraps urllib3's MaxRetryError, whose `reason` says what failed.
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _may_repeat_failure(method: str, exc: requests.RequestException) -> bool:
    if method == "GET":
        return isinstance(exc, requests.ConnectionError | requests.Timeout)
    return never_sent(exc)


def _clipped(timeout: Timeout, remaining: float) -> Timeout:
    if timeout is None:
        return remaining
    if isinstance(timeout, tuple):
        return (min(timeout[0], remaining), min(timeout[1], remaining))
    return min(timeout, remaining)


def send_with_retries(
    request: requests.PreparedRequest,
    send_once: Callable[[Timeout], requests.Response],
    policy: RetryPolicy,
    timeout: Timeout,
    *,
    sleep: Callable[[float], Any] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> requests.Response:
    """`send_once(timeout)` until it answers something final or the policy is spent.

    After the last attempt Garmin's answer is returned as it is (so it is classified by its
    status) and the last failure is raised.
    """
    method = (request.method or "GET").upper()
    return repeated(
        method,
        request.url or "",
        send_once,
        policy,
        timeout,
        Attempts(
            failures=requests.RequestException,
            may_repeat=lambda exc: _may_repeat_failure(method, exc),
            status=lambda response: response.status_code,
            discard=lambda response: response.close(),
        ),
        sleep=sleep,
        monotonic=monotonic,
    )


@dataclass(frozen=True)
class Attempts(Generic[AnswerT, FailureT]):
    """How `repeated` reads one HTTP client's answers and failures."""

    failures: type[FailureT]  # what send_once raises when no answer came
    may_repeat: Callable[[FailureT], bool]  # whether that failure may be tried again
    status: Callable[[AnswerT], int]
    discard: Callable[[AnswerT], None]  # an answer not returned (its connection back)


def repeated(  # noqa: PLR0913 - the request, its sender, and how to read what it gives back
    method: str,
    url: str,
    send_once: Callable[[Timeout], AnswerT],
    policy: RetryPolicy,
    timeout: Timeout,
    attempts: Attempts[AnswerT, FailureT],
    *,
    sleep: Callable[[float], Any] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> AnswerT:
    """send_with_retries for any HTTP client (garmin_client.api_http sends on urllib3)."""
    deadline = monotonic() + policy.budget_seconds
    attempt = 1
    while True:
        response: AnswerT | None = None
        failure: FailureT | None = None
        try:
            response = send_once(_clipped(timeout, deadline - monotonic()))
        except attempts.failures as exc:
            if not attempts.may_repeat(exc):
                raise
            failure = exc
        if response is not None and (
            method != "GET" or attempts.status(response) not in RETRY_STATUSES
        ):
            return response
        attempt += 1
        delay = policy.delay_before(attempt)
        if (
            attempt > policy.attempts
            or monotonic() + delay + MIN_ATTEMPT_SECONDS > deadline
            # The whole call's deadline passed, or the caller cancelled it: what a repeat
            # would send, garmin_client.call_deadline would cut at once.
            or call_expired()
        ):
            if failure is not None:
                raise failure
            assert response is not None
            return response
        if response is not None:
            what = f"HTTP {attempts.status(response)}"
            attempts.discard(response)
        else:
            what = type(failure).__name__
        log.info(
            "garmin %s %s: %s; repeat %d of %d in %.1f s",
            method,
            endpoint_template(url),
            what,
            attempt - 1,
            policy.attempts - 1,
            delay,
        )
        sleep(delay)
