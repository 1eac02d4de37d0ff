"""A caller's user scope (`user_id_prefix` in the callers file) as one SQL predicate."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, func


def starts_with(column: Any, prefix: str) -> ColumnElement[bool]:
    """`column` begins with `prefix`, exactly. LIKE alone is not enough: SQLite compares it
    case-insensitively for ASCII, and user ids are case-sensitive ("t:ann" and "T:bob" are two
    tenants' users). The LIKE stays for PostgreSQL, which can answer it from an index; the
    substring comparison makes the match exact on both."""
    return and_(
        column.startswith(prefix, autoescape=True),
        func.substr(column, 1, len(prefix)) == prefix,
    )
