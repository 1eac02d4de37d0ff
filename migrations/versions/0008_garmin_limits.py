"""Garmin's 429s shared by every replica: per-account cooldowns and per-endpoint breakers.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

After a 429 the account is not sent to Garmin again, for any call, until Garmin's
Retry-After has passed (and its sign-ins go to Garmin one at a time); enough 429s from one
endpoint across accounts open that endpoint's breaker for every replica. Any replica may make
the next call, so both live here. Written out in full (no model imports); names follow
models.NAMING_CONVENTION.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNTS = "garmin_account_limit"
BREAKERS = "garmin_endpoint_breaker"


def _utc() -> sa.DateTime:
    # models.UTCDateTime: timestamptz on PostgreSQL, naive-UTC DATETIME on SQLite.
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        ACCOUNTS,
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=True),
        sa.Column("cooling_until", _utc(), nullable=True),
        sa.Column("cooling_started_at", _utc(), nullable=True),
        sa.Column("call_claimed_until", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_garmin_account_limit")),
    )
    op.create_table(
        BREAKERS,
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("window_started_at", _utc(), nullable=False),
        sa.Column("rate_limited_calls", sa.Integer(), nullable=False),
        sa.Column("open_until", _utc(), nullable=True),
        sa.Column("probe_until", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("endpoint", name=op.f("pk_garmin_endpoint_breaker")),
    )


def downgrade() -> None:
    op.drop_table(BREAKERS)
    op.drop_table(ACCOUNTS)
