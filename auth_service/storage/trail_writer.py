"""Writing a transaction's audit events and change-log entries: its last statement.

A lease RPC records one audit event and one change of one user. On PostgreSQL both rows go
in with one statement (the event's INSERT as a data-modifying WITH clause of the entry's
INSERT): one round trip and one statement's overhead less on the service's hottest path.
Any other mix, and SQLite (which cannot modify rows in a WITH clause), takes one INSERT per
table, each with every row of that table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, insert

from auth_service.storage.audit_repository import EVENTS, INSERT_EVENTS
from auth_service.storage.change_log import CHANGES, INSERT_ENTRIES
from auth_service.storage.executor import Executor, dialect_name


def _prefixed(prefix: str, table_columns: Any) -> dict[str, Any]:
    return {
        column.name: bindparam(prefix + column.name, type_=column.type)
        for column in table_columns
        if column.name != "id"
    }


_EVENT_COLUMNS = _prefixed("e_", EVENTS.c)
_ENTRY_COLUMNS = _prefixed("c_", CHANGES.c)
# Built once (a statement built per call costs more CPU than PostgreSQL spends running it).
_EVENT_THEN_ENTRY = (
    insert(CHANGES)
    .values(_ENTRY_COLUMNS)
    .add_cte(insert(EVENTS).values(_EVENT_COLUMNS).cte("event"))
)


def write_trail(
    session: Executor, events: Sequence[dict[str, Any]], entries: Sequence[dict[str, Any]]
) -> None:
    """Insert `events` (audit) and `entries` (change log), as column values."""
    if len(events) == 1 and len(entries) == 1 and dialect_name(session) == "postgresql":
        params = {"e_" + name: value for name, value in events[0].items()}
        params.update({"c_" + name: value for name, value in entries[0].items()})
        session.execute(_EVENT_THEN_ENTRY, params)
        return
    if events:
        session.execute(INSERT_EVENTS, list(events))
    if entries:
        session.execute(INSERT_ENTRIES, list(entries))
