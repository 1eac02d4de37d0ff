"""Audit trail: one row per audited change or refusal (ListAuditEvents, prune-audit).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Written out in full (no model imports), like 0001. Constraint and index names follow
models.NAMING_CONVENTION and models.GarminAuditEvent.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_audit_event"


def _utc() -> sa.DateTime:
    # models.UTCDateTime: timestamptz on PostgreSQL, naive-UTC DATETIME on SQLite.
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        TABLE,
        # BIGSERIAL on PostgreSQL; on SQLite INTEGER PRIMARY KEY AUTOINCREMENT (the rowid, never
        # reused).
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("occurred_at", _utc(), nullable=False),
        sa.Column("caller", sa.String(length=256), nullable=False),
        sa.Column("rpc", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("outcome_code", sa.String(length=32), nullable=False),
        sa.Column("outcome_reason", sa.String(length=64), nullable=False),
        sa.Column("lease_id", sa.String(length=64), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_garmin_audit_event")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_garmin_audit_event_user_time", TABLE, ["user_id", "occurred_at", "id"], unique=False
    )
    op.create_index("ix_garmin_audit_event_time", TABLE, ["occurred_at", "id"], unique=False)
    op.create_index("ix_garmin_audit_event_lease_id", TABLE, ["lease_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_garmin_audit_event_lease_id", table_name=TABLE)
    op.drop_index("ix_garmin_audit_event_time", table_name=TABLE)
    op.drop_index("ix_garmin_audit_event_user_time", table_name=TABLE)
    op.drop_table(TABLE)
