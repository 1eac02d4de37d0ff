"""Who is calling, and by when it must be answered, for the duration of one RPC (set by the API
layer, read by the domain for the audit trail and by the use cases that may wait). Context
variables, so the domain never needs to know about grpc."""

from __future__ import annotations

import contextvars

current_caller_name: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_caller_name", default=None
)

# The time.monotonic() by which the RPC in progress must be answered (None: outside an RPC, or
# its client set no deadline). A use case that waits (for a refresh slot, for another
# replica's refresh) answers before it rather than past it, when nobody would hear the answer.
rpc_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "rpc_deadline", default=None
)
