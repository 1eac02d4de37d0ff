"""A hook for whoever counts requests to Garmin (the service's metrics), so this package needs
no metrics library: the transport reports every request it finished to its observer.

What an observer sees is safe to label a metric with: the path with identifying segments
replaced (never the query, which may carry an SSO ticket), a status class and the latency.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Final, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

AnswerT = TypeVar("AnswerT")


class RequestObserver(Protocol):
    """Receives one call per request; must be cheap and must never raise."""

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """`endpoint` is a path template; `outcome` is a status class ("2xx", "429", ...),
        "timeout" or "error"; `seconds` includes the retries of a GET."""


# A path segment that identifies something (a number, a UUID or long hex id, an e-mail, an
# over-long token) becomes "{id}", so the endpoint label never carries a user's identifier
# and its values stay few.
_IDENTIFYING_SEGMENT: Final = re.compile(r"^(\d+|[0-9A-Fa-f-]{16,}|[^/]*@[^/]*|[^/]{48,})$")


def endpoint_template(url: str) -> str:
    """The path of `url` with identifying segments replaced, never its query."""
    path = urlsplit(url).path or "/"
    return "/".join(
        "{id}" if _IDENTIFYING_SEGMENT.match(segment) else segment for segment in path.split("/")
    )


def status_outcome(status: int) -> str:
    """The outcome label of an HTTP answer (for senders that are not a requests adapter)."""
    # 429 is Garmin's answer to most fresh logins since March 2026: worth its own series.
    return "429" if status == 429 else f"{status // 100}xx"  # noqa: PLR2004


def observed(
    observer: RequestObserver | None,
    url: str,
    send: Callable[[], AnswerT],
    status: Callable[[AnswerT], int],
) -> AnswerT:
    """`send()` (a request to `url`), reported to `observer` (if any) once it answered, by the
    answer's `status`, or failed."""
    if observer is None:
        return send()
    started = time.perf_counter()
    outcome = "error"
    try:
        answer = send()
    except (requests.Timeout, Urllib3TimeoutError) as exc:
        # urllib3 counts a refused connection as a connect timeout: it is no answer at all.
        if not isinstance(exc, NewConnectionError):
            outcome = "timeout"
        raise
    else:
        outcome = status_outcome(status(answer))
        return answer
    finally:
        observer.upstream_call(endpoint_template(url), outcome, time.perf_counter() - started)
