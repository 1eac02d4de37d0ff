"""A claim on a session's next refresh, so one replica at a time refreshes it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

DI OAuth2 refresh tokens rotate: Garmin kills the old refresh token on every refresh, so two
replicas refreshing with the same token lose the account. Before calling Garmin a replica
claims the refresh on the row (refresh_claim_id, refresh_claimed_until), only if the row
still holds the session version it read and no live claim; everyone else waits for the
version to move. A claim whose holder died expires at refresh_claimed_until.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
DUE_INDEX = "ix_garmin_authentication_state_due"
KEEPALIVE_INDEX = "ix_garmin_authentication_state_keepalive"
ACTIVE_DI = sa.text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'")
# The claim id is random (secrets.token_urlsafe(24): 32 characters); a little room to spare.
CLAIM_ID_LENGTH = 64


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
    COLUMN would append the columns to the last line). PostgreSQL: plain ALTER TABLE."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.add_column(sa.Column("refresh_claim_id", sa.String(CLAIM_ID_LENGTH), nullable=True))
        table.add_column(
            sa.Column("refresh_claimed_until", sa.DateTime(timezone=True), nullable=True)
        )
    _partial_indexes_kept()


def downgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.drop_column("refresh_claimed_until")
        table.drop_column("refresh_claim_id")
    _partial_indexes_kept()
