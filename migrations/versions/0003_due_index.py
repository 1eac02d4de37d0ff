"""LeaseNextSession's due-session index in the query's own order, over ACTIVE rows only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

The first index, (state, last_synced_at), sorted NULLs last, so PostgreSQL could not walk it
in the "never synced first" order: it read every due row and sorted them to take one
(10,000 rows and 14-24 ms per grant at a million sessions; benchmarks/lease_scale.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
INDEX = "ix_garmin_authentication_state_due"
ACTIVE_ONLY = sa.text("state = 'ACTIVE'")


def upgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    op.create_index(
        INDEX,
        TABLE,
        [sa.text("(last_synced_at IS NOT NULL)"), "last_synced_at", "user_id"],
        postgresql_where=ACTIVE_ONLY,
        sqlite_where=ACTIVE_ONLY,
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    op.create_index(INDEX, TABLE, ["state", "last_synced_at"])
