"""One sign-in at a time per Garmin account, across user ids.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

A sign-in claims its user (garmin_account_limit.call_claimed_until), so a second Login of the
same user waits instead of meeting the same 429. Two user ids of one Garmin account could
still sign in at once, and the one still under way posted its password into the 429 the
other had just met. garmin_signin_account.sign_in_claimed_until claims the account for its
one sign-in (or MFA code) with Garmin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_signin_account"
COLUMN = "sign_in_claimed_until"


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
