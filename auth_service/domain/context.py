"""Who is calling, and by when it must be answered, for the duration of one RPC (set by the API
layer, read by the domain for the audit trail and by the use cases that may wait). Context
variables, so the domain never needs to know about grpc."""

from __future__ import annotations

import contextvars
from typing import Final

current_caller_name: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_caller_name", default=None
)

# The time.monotonic() by which the RPC in progress must be answered (None: outside an RPC, or
# its client set no deadline). A use case that waits (for a refresh slot, for another
# replica's refresh) answers before it rather than past it, when nobody would hear the answer.
rpc_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "rpc_deadline", default=None
)

# What an answer needs once a wait gives up: the refusal's own transaction and the trip back.
ANSWER_MARGIN_SECONDS: Final = 0.5


def rpc_answer_by() -> float | None:
    """When a wait must give up to answer the RPC in progress in time (rpc_deadline less
    ANSWER_MARGIN_SECONDS; None: outside an RPC, or no deadline)."""
    rpc = rpc_deadline.get()
    return None if rpc is None else rpc - ANSWER_MARGIN_SECONDS


def answer_by(own_deadline: float) -> float:
    """When a wait with its own deadline (a time.monotonic()) gives up: at that deadline, or in
    time to answer the RPC in progress, whichever comes first. Nobody hears an answer past
    the RPC's deadline, and the handler would go on for a caller that left."""
    rpc = rpc_answer_by()
    return own_deadline if rpc is None else min(own_deadline, rpc)
