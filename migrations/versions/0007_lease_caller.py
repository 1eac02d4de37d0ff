"""A lease is bound to the caller that obtained it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Holder calls (RenewLease, RefreshLease, ReleaseLease, Report*) from another caller than the
one that was granted the lease answer LEASE_LOST (issue 13), so the grant records the
caller's name. Leases granted before this revision have none: they are bound to nobody, and
their holders' calls answer LEASE_LOST (workers lease again; leases live minutes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
DUE_INDEX = "ix_garmin_authentication_state_due"
KEEPALIVE_INDEX = "ix_garmin_authentication_state_keepalive"
ACTIVE_DI = sa.text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'")
# The audit trail's caller column width (migrations never import the models).
CALLER_LENGTH = 256


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
        table.add_column(sa.Column("lease_caller", sa.String(length=CALLER_LENGTH), nullable=True))
    _partial_indexes_kept()


def downgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.drop_column("lease_caller")
    _partial_indexes_kept()
