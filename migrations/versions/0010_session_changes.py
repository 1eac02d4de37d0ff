"""The session change log (WatchSessionEvents) and the webhook cursor (issue 16).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

Written out in full (no model imports). Names follow models.NAMING_CONVENTION and
models.GarminSessionChange, GarminChangeCounter and GarminWebhookCursor. The counter starts
with its one row at position 0: the log starts empty, with the changes after this revision
(earlier audit events hold no status to replay).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANGES = "garmin_session_change"
COUNTER = "garmin_change_counter"
WEBHOOK = "garmin_webhook_cursor"


def _utc() -> sa.DateTime:
    # models.UTCDateTime: timestamptz on PostgreSQL, naive-UTC DATETIME on SQLite.
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        CHANGES,
        # BIGSERIAL on PostgreSQL; on SQLite INTEGER PRIMARY KEY AUTOINCREMENT.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("occurred_at", _utc(), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("rpc", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_garmin_session_change")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_garmin_session_change_position", CHANGES, ["position"], unique=True)
    op.create_index("ix_garmin_session_change_user", CHANGES, ["user_id", "position"])
    op.create_index(
        "ix_garmin_session_change_pending",
        CHANGES,
        ["id"],
        postgresql_where=sa.text("position IS NULL"),
        sqlite_where=sa.text("position IS NULL"),
    )
    counter = op.create_table(
        COUNTER,
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_garmin_change_counter")),
    )
    op.bulk_insert(counter, [{"id": 1, "last_position": 0}])
    op.create_table(
        WEBHOOK,
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("delivered_through", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _utc(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_garmin_webhook_cursor")),
    )


def downgrade() -> None:
    op.drop_table(WEBHOOK)
    op.drop_table(COUNTER)
    op.drop_index("ix_garmin_session_change_pending", table_name=CHANGES)
    op.drop_index("ix_garmin_session_change_user", table_name=CHANGES)
    op.drop_index("ix_garmin_session_change_position", table_name=CHANGES)
    op.drop_table(CHANGES)
