"""What the service tells about its own work while it happens (lease takeovers, calls to
Garmin), without the domain or the upstream adapter knowing who listens.

The listener of one RPC is put in a contextvar by the API layer (auth_service.api.interceptor
sets the replica's metrics), so several replicas in one process each count their own calls,
and code running outside an RPC (tests of the domain alone, the sync worker's use of the
upstream adapter) reports to nobody. This module imports nothing beyond the standard library:
the domain stays free of prometheus, grpc and HTTP libraries.
"""

from __future__ import annotations

import contextvars
from typing import Protocol


class ServiceEvents(Protocol):
    """Receives the events; every method must be cheap and must never raise."""

    def lease_taken_over(self) -> None:
        """A grant replaced a lease that had expired without being released or ended."""

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """One request to Garmin finished. `endpoint` is a path template (never a query or
        a user's identifier); `outcome` is a status class ("2xx", "429", ...), "timeout"
        or "error"."""


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
