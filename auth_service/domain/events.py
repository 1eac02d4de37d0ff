"""What the service tells about its own work while it happens (lease takeovers, calls to
Garmin), without the domain or the upstream adapter knowing who listens.

The listener of one RPC is put in a contextvar by the API layer (auth_service.api.interceptor
sets the replica's metrics), so several replicas in one process each count their own calls,
and code running outside an RPC (tests of the domain alone, the sync worker's use of the
upstream adapter) reports to nobody. This module imports nothing beyond the standard library:
the domain stays free of prometheus, grpc and HTTP libraries.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol


class ServiceEvents(Protocol):
    """Receives the events; every method must be cheap and must never raise."""

    def lease_taken_over(self) -> None:
        """A grant replaced a lease that had expired without being released or ended."""

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """One request to Garmin finished. `endpoint` is a path template (never a query or
        a user's identifier); `outcome` is a status class ("2xx", "429", ...), "timeout"
        or "error"."""


class RefreshEvents(Protocol):
    """Receives what the central refresh does (a replica's metrics); cheap, never raising.

    Unlike ServiceEvents it is handed to the refresher when the replica is built: keep-alive
    refreshes outside any RPC and must be counted too.
    """

    def refresh_finished(self, kind: str, outcome: str, seconds: float) -> None:
        """One refresh this replica claimed ended. `kind` is a SessionKind value; `outcome`
        one of REFRESH_OUTCOMES."""

    def refresh_waited(self, outcome: str) -> None:
        """A refresh found another replica's claim and waited; `outcome` is one of
        WAIT_OUTCOMES."""

    def rotated_pair_unstored(self, seconds: float) -> None:
        """How long a pair Garmin issued lived only in this replica's memory before its
        commit landed (a crash within it loses a DI session)."""


# rotated: stored; rejected: Garmin said the session is dead (it ended); superseded: the row
# changed meanwhile (a newer token or a login won); rate_limited, unavailable: Garmin was
# busy (nothing changed); error: anything else (nothing changed).
REFRESH_OUTCOMES = ("rotated", "rejected", "superseded", "rate_limited", "unavailable", "error")
# rotated: the other replica's tokens were used; released: its refresh failed; timeout.
WAIT_OUTCOMES = ("rotated", "released", "timeout")


class NoRefreshEvents:
    """RefreshEvents that ignores everything (tests of the use cases alone)."""

    def refresh_finished(self, kind: str, outcome: str, seconds: float) -> None:  # noqa: ARG002
        return None

    def refresh_waited(self, outcome: str) -> None:  # noqa: ARG002
        return None

    def rotated_pair_unstored(self, seconds: float) -> None:  # noqa: ARG002
        return None


class LimitEvents(Protocol):
    """Receives what the service does about Garmin's 429s (a replica's metrics); cheap,
    never raising. Handed to the gate when the replica is built, like RefreshEvents."""

    def call_suppressed(self, endpoint: str, reason: str) -> None:
        """A call to `endpoint` was answered without Garmin; `reason` is one of
        SUPPRESSION_REASONS."""

    def rate_limited(self, endpoint: str, breaker_opened: bool) -> None:
        """Garmin answered 429 at `endpoint`; `breaker_opened` when that opened its breaker."""


# account_cooldown: the account waits out a 429; signin_cooldown: its sign-ins wait out the
# longer GARMIN_AUTH_SIGNIN_COOLDOWN; breaker_open: the endpoint's breaker is open (or
# half-open with its probe out); in_flight: another sign-in of the account is with Garmin.
SUPPRESSION_REASONS = ("account_cooldown", "signin_cooldown", "breaker_open", "in_flight")


class NoLimitEvents:
    """LimitEvents that ignores everything (tests of the use cases alone)."""

    def call_suppressed(self, endpoint: str, reason: str) -> None:  # noqa: ARG002
        return None

    def rate_limited(self, endpoint: str, breaker_opened: bool) -> None:  # noqa: ARG002
        return None


class _NoListener:
    def lease_taken_over(self) -> None:
        return None

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:  # noqa: ARG002
        return None


_NO_LISTENER = _NoListener()

current_listener: contextvars.ContextVar[ServiceEvents | None] = contextvars.ContextVar(
    "current_service_events_listener", default=None
)


def service_events() -> ServiceEvents:
    """The listener of the RPC in progress (one that ignores everything outside an RPC)."""
    return current_listener.get() or _NO_LISTENER


@contextlib.contextmanager
def listening(listener: ServiceEvents) -> Iterator[None]:
    """Run the block with `listener` as the one service_events() returns: the API layer for an
    RPC, the composition root for work outside any RPC (keep-alive's refreshes reach Garmin
    too, and their requests must be counted like an RPC's)."""
    token = current_listener.set(listener)
    try:
        yield
    finally:
        current_listener.reset(token)
