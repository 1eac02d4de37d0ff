"""Login counters and sign-in cooldowns per Garmin account, beside the user's own.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Garmin locks an account (its email) that signs in too often, whichever of our user ids it is
signed in for, and its sign-in 429s are reported per account. The login limit and the sign-in
cooldown were kept per user id only, so two user ids an application gave the same Garmin
login each had their own. garmin_signin_account keeps them per account, keyed by a keyed
digest of the email (never the email); garmin_mfa_challenge.account_digest names the account
a pending login signs in to, so SubmitMfa honours its cooldown. Challenges stored before this
revision have NULL: they are held back by their user's cooldown alone, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNTS = "garmin_signin_account"
CHALLENGES = "garmin_mfa_challenge"
# Hex SHA-256, the digest's width in the models (written out: a migration never imports them
# and stays as it was written).
DIGEST_LENGTH = 64


def _utc() -> sa.DateTime:
    # models.UTCDateTime: timestamptz on PostgreSQL, naive-UTC DATETIME on SQLite.
    return sa.DateTime(timezone=True)


def _recreate() -> Literal["auto", "always"]:
    """SQLite: copy the table, so its DDL reads as the models write it (ALTER TABLE ADD
    COLUMN would append the column to the last line). PostgreSQL: plain ALTER TABLE."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    op.create_table(
        ACCOUNTS,
        sa.Column("account_digest", sa.String(length=DIGEST_LENGTH), nullable=False),
        sa.Column("window_started_at", _utc(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("signin_cooldown_until", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("account_digest", name=op.f("pk_garmin_signin_account")),
    )
    with op.batch_alter_table(CHALLENGES, recreate=_recreate()) as table:
        table.add_column(
            sa.Column("account_digest", sa.String(length=DIGEST_LENGTH), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table(CHALLENGES, recreate=_recreate()) as table:
        table.drop_column("account_digest")
    op.drop_table(ACCOUNTS)
