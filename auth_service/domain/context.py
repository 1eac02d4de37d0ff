"""Who is calling, for the duration of one RPC (set by the API layer, read by the domain for
the audit trail). A contextvar, so the domain never needs to know about grpc."""

from __future__ import annotations

import contextvars

current_caller_name: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_caller_name", default=None
)
