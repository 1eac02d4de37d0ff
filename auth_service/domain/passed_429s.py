"""Garmin's 429s that a call went on past.

A provider may make a request its call can do without (garth's "best-effort" load of the SSO's
embed page between the SSO's answer and the ticket exchange): a 429 there does not fail the
call, so no GarminRateLimited leaves it for the gate and the sign-in cooldown to see. The
provider notes such a 429 here instead, and each of them around the call honours it as it
would one raised: Garmin asked us to stop calling that endpoint, whether or not this call
needed the answer.

A context variable carries them: a call runs in one thread from the gate to the provider and
back. Each watcher (`noting`) gets every 429 noted while it watches, as each would see a
raised one pass through it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

from auth_service.domain.errors import GarminRateLimited

log = logging.getLogger(__name__)

_WATCHERS: ContextVar[tuple[list[GarminRateLimited], ...]] = ContextVar(
    "garmin_passed_429s", default=()
)


@contextlib.contextmanager
def noting() -> Iterator[list[GarminRateLimited]]:
    """The 429s noted (`note`) while the block runs, in the order noted."""
    noted: list[GarminRateLimited] = []
    token = _WATCHERS.set((*_WATCHERS.get(), noted))
    try:
        yield noted
    finally:
        _WATCHERS.reset(token)


def note(error: GarminRateLimited) -> None:
    """A request of the call in progress was answered 429 and the call went on without it."""
    watchers = _WATCHERS.get()
    if not watchers:
        # A call to Garmin outside the gate: nobody can hold the endpoint back.
        where = error.endpoint.value if error.endpoint is not None else "an endpoint"
        log.warning("Garmin's 429 at %s passed unheeded (no call watches it)", where)
    for noted in watchers:
        noted.append(error)
