"""A per-account cooldown after Garmin's sign-in answered 429.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Since March 2026 Garmin's edge answers most fresh sign-ins from servers with 429, and tries
within the next hours only extend the block. Any replica may take the next Login, so the
cooldown lives in the database, beside the login counter of the same user.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_login_throttle"


def upgrade() -> None:
    # recreate: SQLite's ADD COLUMN would leave a table whose DDL differs from a fresh one's.
    with op.batch_alter_table(TABLE, recreate="always") as table:
        table.add_column(
            sa.Column("signin_cooldown_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as table:
        table.drop_column("signin_cooldown_until")
