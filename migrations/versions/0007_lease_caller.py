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

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
# The audit trail's caller column width (migrations never import the models).
CALLER_LENGTH = 256


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("lease_caller", sa.String(length=CALLER_LENGTH), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite >= 3.35 has it): batch mode would copy the table on SQLite
    # and lose its partial indexes (see 0004).
    op.execute(f"ALTER TABLE {TABLE} DROP COLUMN lease_caller")
