"""Keep-alive leaves a session alone until keepalive_not_before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

Keep-alive picked every ACTIVE DI session whose refresh token dies within its window, on
every pass, whatever the last refresh did. When a refresh does not move the expiry out of the
window (GARMIN_AUTH_DI_REFRESH_EXPIRY_ON_ROTATION=keep, or a refresh lifetime shorter than the
window) the same session was refreshed every 5 minutes for days; and sessions whose refresh
always fails stayed at the head of the order and starved the others. Rows written before this
revision have NULL: keep-alive takes them when due, as before, and sets the column then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
DUE_INDEX = "ix_garmin_authentication_state_due"
KEEPALIVE_INDEX = "ix_garmin_authentication_state_keepalive"
ACTIVE_DI = sa.text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'")


def _partial_indexes_kept() -> None:
    """SQLite's batch mode copies the table and loses its partial indexes: put them back
    exactly as 0003 and 0004 made them."""
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(f"DROP INDEX IF EXISTS {DUE_INDEX}")
    op.execute(f"DROP INDEX IF EXISTS {KEEPALIVE_INDEX}")
    op.create_index(
        DUE_INDEX,
        TABLE,
        [sa.text("(last_synced_at IS NOT NULL)"), "last_synced_at", "user_id"],
        sqlite_where=sa.text("state = 'ACTIVE'"),
    )
    op.create_index(KEEPALIVE_INDEX, TABLE, ["refresh_token_expires_at"], sqlite_where=ACTIVE_DI)


def _recreate() -> Literal["auto", "always"]:
    """SQLite: copy the table, so its DDL reads as the models write it (ALTER TABLE ADD
    COLUMN would append the column to the last line). PostgreSQL: plain ALTER TABLE."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        # models.UTCDateTime: timestamptz on PostgreSQL, naive-UTC DATETIME on SQLite.
        table.add_column(
            sa.Column("keepalive_not_before", sa.DateTime(timezone=True), nullable=True)
        )
    _partial_indexes_kept()


def downgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.drop_column("keepalive_not_before")
    _partial_indexes_kept()
