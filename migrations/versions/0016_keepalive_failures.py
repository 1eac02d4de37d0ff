"""Keep-alive counts a session's failed attempts: keepalive_failures, first in its order.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Keep-alive took sessions whose refresh token dies soonest first and held one whose refresh
failed, or met Garmin's 429, back a fixed hour. An account Garmin blocks for days is never
refreshed, so it stayed first: its 429 ended a pass every hour, and a dozen of them ended
every pass (one every 5 minutes); sessions that fail every time (a refused client id, a key
left out of the ring) took every batch once there were more of them than an hour's passes
take. The sessions behind them were never refreshed and died. keepalive_failures counts a
session's failed attempts since its tokens last changed; keep-alive orders by it before the
expiry (the keep-alive index leads with it) and doubles the hold-back with each. Existing
rows start at 0, as if none had failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
COLUMN = "keepalive_failures"
DUE_INDEX = "ix_garmin_authentication_state_due"
KEEPALIVE_INDEX = "ix_garmin_authentication_state_keepalive"
ACTIVE_DI = sa.text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'")
# The keep-alive index's columns after this revision, and before it (0004).
KEEPALIVE_COLUMNS = [COLUMN, "refresh_token_expires_at"]
KEEPALIVE_COLUMNS_BEFORE = ["refresh_token_expires_at"]


def _due_index_kept() -> None:
    """SQLite's batch mode copies the table and loses its partial indexes: put the due index
    back exactly as 0003 made it (the keep-alive index is made below either way)."""
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(f"DROP INDEX IF EXISTS {DUE_INDEX}")
    op.create_index(
        DUE_INDEX,
        TABLE,
        [sa.text("(last_synced_at IS NOT NULL)"), "last_synced_at", "user_id"],
        sqlite_where=sa.text("state = 'ACTIVE'"),
    )


def _keepalive_index(columns: list[str]) -> None:
    """The keep-alive index over `columns`, replacing whatever is there (SQLite's table copy
    may have lost it already)."""
    op.execute(f"DROP INDEX IF EXISTS {KEEPALIVE_INDEX}")
    op.create_index(
        KEEPALIVE_INDEX, TABLE, columns, postgresql_where=ACTIVE_DI, sqlite_where=ACTIVE_DI
    )


def _recreate() -> Literal["auto", "always"]:
    """SQLite: copy the table, so its DDL reads as the models write it (ALTER TABLE ADD
    COLUMN would append the column to the last line). PostgreSQL: plain ALTER TABLE (a
    constant default: no table rewrite)."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.add_column(
            sa.Column(COLUMN, sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
    _due_index_kept()
    _keepalive_index(KEEPALIVE_COLUMNS)


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {KEEPALIVE_INDEX}")
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.drop_column(COLUMN)
    _due_index_kept()
    _keepalive_index(KEEPALIVE_COLUMNS_BEFORE)
