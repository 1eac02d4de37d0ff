"""What repositories run their statements on: a Core connection or an ORM session.

A unit of work runs on a Core connection (auth_service.storage.unit_of_work): the service's
hottest transactions (a lease grant, a release) pay neither for an ORM session nor for its
execution path. The few repositories that load and change ORM objects get a session joined
to that connection's transaction. Background passes (the change log's sequencer, pruning)
run on ORM sessions of their own; the repositories they share accept either.
"""

from __future__ import annotations

from typing import TypeAlias

from sqlalchemy import Connection
from sqlalchemy.orm import Session

Executor: TypeAlias = Connection | Session


def dialect_name(executor: Executor) -> str:
    """The backend's name: "postgresql" or "sqlite"."""
    if isinstance(executor, Connection):
        return executor.dialect.name
    return executor.get_bind().dialect.name
