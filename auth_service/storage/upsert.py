"""INSERT ... ON CONFLICT DO NOTHING on either backend (a racing replica may insert first)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignoring_conflict(session: Session, table: Table, values: dict[str, Any]) -> None:
    """Insert the row unless one with the same key exists already."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(table).values(**values).on_conflict_do_nothing())
