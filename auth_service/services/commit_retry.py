"""Committing what Garmin just issued, into a database that may refuse it for a while.

A pair Garmin rotated (or issued for a token file) exists only in this replica's memory until
its transaction commits, and the refresh token it replaced is dead already: dropping the pair
loses the user's session. So the commit is retried, with a backoff, while the database is
restarting or unreachable, for a bounded time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from auth_service.domain.errors import DomainError

log = logging.getLogger(__name__)

T = TypeVar("T")

# The first pause between two attempts, doubled each time up to the longest.
FIRST_BACKOFF_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 1.0


def commit_retried(commit: Callable[[], T], *, seconds: float, what: str, user_id: str) -> T:
    """Run `commit` (one transaction) until it lands, for at most `seconds`. A DomainError is
    an answer, raised at once; any other error is retried, then raised once time is up."""
    deadline = time.monotonic() + seconds
    backoff = FIRST_BACKOFF_SECONDS
    while True:
        try:
            return commit()
        except DomainError:
            raise
        except Exception as exc:
            if time.monotonic() > deadline:
                log.error(  # noqa: TRY400 - the type only: driver messages can echo secrets
                    "%s of user %s could not be stored for %.0f s (%s); giving up: the user "
                    "may need to sign in again",
                    what,
                    user_id,
                    seconds,
                    type(exc).__name__,
                )
                raise
            log.warning(
                "%s of user %s not stored yet (%s); retrying", what, user_id, type(exc).__name__
            )
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
