"""An account's sign-in cooldown and its cooldown of every call end separately.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

garmin_account_limit held one cooldown per account: its end and the endpoint whose 429
started it (a sign-in's holds back sign-ins only, any other holds back every call). Two 429s
of different reach could not both be kept: a short 429 of the token endpoint during a long
sign-in cooldown held back every call (ticket exchanges and refreshes too) until the sign-in's
end, and a long sign-in 429 during a short cooldown of every call did the same.
sign_in_cooling_until keeps the sign-in's end beside the other. Rows written before this
revision have NULL: their one cooldown reads as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_account_limit"
COLUMN = "sign_in_cooling_until"


def _recreate() -> Literal["auto", "always"]:
    """SQLite: copy the table, so its DDL reads as the models write it (ALTER TABLE ADD
    COLUMN would append the column to the last line). PostgreSQL: plain ALTER TABLE."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        # models.UTCDateTime: timestamptz on PostgreSQL, naive-UTC DATETIME on SQLite.
        table.add_column(sa.Column(COLUMN, sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.drop_column(COLUMN)
