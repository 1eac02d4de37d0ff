"""Each request to Garmin, timed and reported (endpoint template, outcome, latency) to the
listener of the RPC in progress."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from auth_service.domain.events import service_events

# A path segment that identifies something (a number, a UUID or long hex id, an e-mail, an
# over-long token) becomes "{id}", so the endpoint label never carries a user's identifier
# and its values stay few.
_IDENTIFYING_SEGMENT = re.compile(r"^(\d+|[0-9A-Fa-f-]{16,}|[^/]*@[^/]*|[^/]{48,})$")


def endpoint_template(url: str) -> str:
    """The path of `url` with identifying segments replaced, never its query."""
    path = urlsplit(url).path or "/"
    return "/".join(
        "{id}" if _IDENTIFYING_SEGMENT.match(segment) else segment for segment in path.split("/")
    )


def _status_outcome(status: int) -> str:
    # 429 is Garmin's answer to most fresh logins since March 2026: worth its own series.
    return "429" if status == 429 else f"{status // 100}xx"  # noqa: PLR2004


SendT = TypeVar("SendT", bound=Callable[..., requests.Response])


def observe_upstream_send(send: SendT) -> SendT:
    """Decorates requests' HTTPAdapter.send: each request to Garmin is reported to the
    listener of the RPC in progress (auth_service.domain.events), if any."""

    @functools.wraps(send)
    def observed(self: Any, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        outcome = "error"
        try:
            response = send(self, request, *args, **kwargs)
        except (requests.Timeout, Urllib3TimeoutError):
            outcome = "timeout"
            raise
        else:
            outcome = _status_outcome(response.status_code)
            return response
        finally:
            service_events().upstream_call(
                endpoint_template(request.url or ""), outcome, time.perf_counter() - started
            )

    return cast(SendT, observed)
