"""What Garmin answered, as errors: the session is dead, Garmin asks us to wait, or Garmin
could not be used. The worker acts on them directly; the service's garth provider turns them
into its domain errors (auth_service.upstream.errors).

Messages name the step and the HTTP status, never a token, password, cookie or ticket.
"""

from __future__ import annotations


class GarminError(Exception):
    """Base of the errors that describe Garmin's answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionRejected(GarminError):
    """Garmin definitely rejected the session (401 on the token exchange or on the API).

    The only answer that means the stored session is dead.
    """


class AccessTokenRejected(SessionRejected):
    """A 401 from the Connect API, not from the exchange: a refresh may still save it."""


class RateLimited(GarminError):
    """Garmin answered 429. Try later; the session is not affected."""

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class NotFound(GarminError):
    """Garmin answered 404 or 410 for a download: the item has no such file (an activity
    entered by hand has no original file). Only the download says it; Garmin is not down and
    the session is fine."""


class FileTooLarge(NotFound):
    """A download larger than the client reads (garmin_client.answer_cap.MAX_ANSWER_BYTES): not
    read, and, like a file Garmin does not have, no reason to fail the rest of the sync."""


class Unavailable(GarminError):
    """Garmin was unreachable, answered 5xx, timed out or answered something unreadable.

    Try later; the session is not affected. `unanswered`: the request may have reached Garmin
    and been acted on, its answer lost (it timed out, or the connection broke, after it was
    sent): a step that must not be repeated (an MFA code) counts it as judged.
    """

    def __init__(self, message: str, *, unanswered: bool = False) -> None:
        super().__init__(message)
        self.unanswered = unanswered


class RefusalInDoubt(Unavailable):
    """Garmin answered 401 to garth's token exchange, which may be the session's end or Garmin
    refusing our OAuth consumer or clock (auth_service.upstream.garth.exchange_refusals).

    An answer, not a missing one: Garmin's endpoint works. The session is kept, try later;
    the service ends it when such refusals outlast a grace (GARMIN_AUTH_GARTH_REFUSAL_GRACE).
    """
