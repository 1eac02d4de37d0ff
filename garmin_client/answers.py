"""What a failed call to Garmin (garth's or a plain requests one) means, as a garmin_client
error (garmin_client.errors). Imports no garth: the worker classifies its calls here too.

* 429 anywhere -> RateLimited (retry_after_seconds from Retry-After, seconds or date). A date
  is measured from `now` when given, else on this machine's clock: a caller that keeps the
  wait on another clock (the service: the database's) passes that clock's now, or a machine
  clock running ahead would shorten every wait it imposes.
* When Garmin judges stored tokens: 401 on the token exchange -> SessionRejected; 401 on the
  Connect API -> AccessTokenRejected (a refresh may still save the session). 403 is not a
  definite rejection (Garmin's edge answers 403 to clients it dislikes). The exchange's 401
  is also Garmin's answer to a consumer or a clock it refuses: the service's garth provider
  takes it as the session's end only when it has seen Garmin accept the same consumer
  (auth_service.upstream.garth.exchange_refusals), else as Unavailable.
* Everything else (5xx, other 4xx, a 401 while logging in, timeouts, connection errors,
  malformed JSON, HTML where JSON was expected, missing fields) -> Unavailable.

Every failure is logged as one line: the operation, the error's class, the status and path
or the exception's class. Never a message, a URL or a body, which may carry secrets.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from urllib.parse import urlsplit

import requests
from requests.models import Response
from urllib3.exceptions import DecodeError, NewConnectionError
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from garmin_client.answer_cap import AnswerTooLarge
from garmin_client.endpoints import EXCHANGE_PATH, PREAUTHORIZED_PATH, step_name
from garmin_client.errors import (
    AccessTokenRejected,
    GarminError,
    RateLimited,
    SessionRejected,
    Unavailable,
)
from garmin_client.retry import never_sent

log = logging.getLogger(__name__)


def _cause(exc: BaseException) -> BaseException:
    """The requests error behind a garth one: garth wraps what requests raised in a
    GarthHTTPError's `error` (read by name, so this module needs no garth)."""
    inner = getattr(exc, "error", None)
    return inner if isinstance(inner, requests.RequestException) else exc


def http_response(exc: BaseException) -> Response | None:
    """Garmin's answer behind a garth or requests error, if there was one."""
    cause = _cause(exc)
    if isinstance(cause, requests.HTTPError):
        return cause.response
    return None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None. A date
    is measured from `now`: the current time on the clock the wait will be kept on (default
    this machine's). A number too large for a float is infinite (every caller caps the wait):
    the longer Garmin asks us to wait, never the shorter we do."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        return _seconds_until_http_date(text, now or datetime.now(UTC))
    if seconds == math.inf and any(character.isdigit() for character in text):
        # A number past a float's range ("1e999", 400 digits); "inf" itself is no number.
        return math.inf
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _seconds_until_http_date(text: str, now: datetime) -> float | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


def _from_status(response: Response, *, judging_tokens: bool, now: datetime | None) -> GarminError:
    return status_error(
        response.status_code,
        response.url or "",
        response.headers.get("Retry-After"),
        judging_tokens=judging_tokens,
        now=now,
    )


def status_error(
    status: int,
    url: str,
    retry_after: str | None,
    *,
    judging_tokens: bool,
    now: datetime | None = None,
) -> GarminError:
    """What Garmin's answer `status` to `url` means (any HTTP client's; `retry_after`: the
    answer's Retry-After header, a date in it measured from `now`)."""
    path = urlsplit(url).path
    step = step_name(path)
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        retry_after_s = retry_after_seconds(retry_after, now)
        return RateLimited(f"Garmin is rate limiting ({step}, HTTP 429)", retry_after_s)
    if judging_tokens and status == HTTPStatus.UNAUTHORIZED:
        if path == EXCHANGE_PATH:
            return SessionRejected("Garmin refused the session (HTTP 401 on the token exchange)")
        if path != PREAUTHORIZED_PATH:
            return AccessTokenRejected("Garmin refused the session (HTTP 401 on the Connect API)")
    return Unavailable(f"Garmin answered HTTP {status} ({step})")


def _without_answer(cause: BaseException) -> Unavailable:
    """No HTTP status to go by: the network failed or the answer could not be read (requests'
    errors, and urllib3's from garmin_client.api_http)."""
    # Sent, perhaps acted on, its answer lost: anything but a connection never made.
    unanswered = not (
        isinstance(cause, NewConnectionError)
        or (isinstance(cause, requests.RequestException) and never_sent(cause))
    )
    if isinstance(cause, requests.Timeout) or (
        # urllib3 counts a refused connection as a connect timeout: it is no answer at all.
        isinstance(cause, Urllib3TimeoutError) and not isinstance(cause, NewConnectionError)
    ):
        return Unavailable("Garmin did not answer in time", unanswered=unanswered)
    if isinstance(cause, AnswerTooLarge):
        # Read no further than the cap (garmin_client.answer_cap): what it says, and no more.
        return Unavailable(f"Garmin's answer was {cause}, not read", unanswered=True)
    # Before OSError: requests' JSONDecodeError is both a ValueError and a RequestException.
    if isinstance(cause, ValueError | DecodeError):
        return Unavailable("Garmin answered something unreadable")
    if isinstance(cause, OSError | Urllib3HTTPError):
        return Unavailable("Garmin could not be reached", unanswered=unanswered)
    return Unavailable("Garmin answered something unreadable")


def classify(
    exc: BaseException, *, judging_tokens: bool, now: datetime | None = None
) -> GarminError:
    """The error a failed call means. `judging_tokens`: Garmin was judging stored
    tokens (exchange, API), not an email, password or MFA code. `now`: as for
    retry_after_seconds."""
    if isinstance(exc, GarminError):
        return exc
    response = http_response(exc)
    if response is not None:
        return _from_status(response, judging_tokens=judging_tokens, now=now)
    return _without_answer(_cause(exc))


def log_failure(operation: str, error: Exception, exc: BaseException, *, routine: bool) -> None:
    """One line per failed call; `routine` failures (a refused password) are only INFO."""
    response = http_response(exc)
    detail = (
        _answered(response.status_code, response.url or "")
        if response is not None
        else type(exc).__name__
    )
    _log_failure(operation, error, detail, routine=routine)


def answer_failure(
    operation: str,
    status: int,
    url: str,
    retry_after: str | None,
    *,
    judging_tokens: bool,
    now: datetime | None = None,
) -> GarminError:
    """failure() for Garmin's answer `status` to `url` through an HTTP client that raises
    nothing for it (garmin_client.api_http): classified and logged the same way."""
    error = status_error(status, url, retry_after, judging_tokens=judging_tokens, now=now)
    _log_failure(operation, error, _answered(status, url), routine=False)
    return error


def _answered(status: int, url: str) -> str:
    return f"HTTP {status} on {urlsplit(url).path}"


def _log_failure(operation: str, error: Exception, detail: str, *, routine: bool) -> None:
    log.log(
        logging.INFO if routine else logging.WARNING,
        "garmin %s failed: %s (%s)",
        operation,
        type(error).__name__,
        detail,
    )


def failure(
    operation: str, exc: BaseException, *, judging_tokens: bool, now: datetime | None = None
) -> GarminError:
    """Classify a failed call and log it (`now`: as for retry_after_seconds)."""
    error = classify(exc, judging_tokens=judging_tokens, now=now)
    log_failure(operation, error, exc, routine=False)
    return error
