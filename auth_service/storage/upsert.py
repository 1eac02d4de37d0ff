"""INSERT ... ON CONFLICT DO NOTHING on either backend (a racing replica may insert first)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite

from auth_service.storage.executor import Executor, dialect_name


def insert_ignoring_conflict(session: Executor, table: Table, values: dict[str, Any]) -> bool:
    """Insert the row unless one with the same key exists already; True when inserted."""
    dialect = dialect_name(session)
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # RETURNING rather than rowcount: psycopg reports no row count for ON CONFLICT inserts.
    statement = insert(table).values(**values).on_conflict_do_nothing()
    inserted = session.execute(statement.returning(*table.primary_key.columns)).first()
    return inserted is not None
