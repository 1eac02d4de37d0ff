"""Initial schema: sessions with their lease, pending MFA challenges, login throttle.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written out in full (no model imports): a revision must keep producing the same schema when
the models change later. Constraint names follow models.NAMING_CONVENTION.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SESSION_STATES = ("NOT_CONNECTED", "MFA_PENDING", "ACTIVE", "AUTH_EXPIRED")


def _utc() -> sa.DateTime:
    # models.UTCDateTime: timestamptz on PostgreSQL, naive-UTC DATETIME on SQLite.
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "garmin_authentication_state",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        # Non-native enum: a VARCHAR plus a CHECK constraint, identical on both backends.
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("session_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("session_version", sa.BigInteger(), nullable=False),
        sa.Column("access_token_expires_at", _utc(), nullable=True),
        sa.Column("lease_id", sa.String(length=64), nullable=True),
        sa.Column("lease_holder", sa.String(length=256), nullable=True),
        sa.Column("lease_acquired_at", _utc(), nullable=True),
        sa.Column("lease_expires_at", _utc(), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False),
        sa.Column("last_validated_at", _utc(), nullable=True),
        sa.Column("last_synced_at", _utc(), nullable=True),
        sa.Column("synced_through", _utc(), nullable=True),
        sa.Column("last_sync_attempt_at", _utc(), nullable=True),
        sa.Column("invalidated_reason", sa.String(length=512), nullable=True),
        sa.Column("invalidated_at", _utc(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.CheckConstraint(
            sa.column("state").in_(SESSION_STATES),
            name=op.f("ck_garmin_authentication_state_session_state"),
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_garmin_authentication_state")),
        sa.UniqueConstraint("lease_id", name=op.f("uq_garmin_authentication_state_lease_id")),
    )
    op.create_index(
        "ix_garmin_authentication_state_due",
        "garmin_authentication_state",
        ["state", "last_synced_at"],
        unique=False,
    )
    op.create_table(
        "garmin_login_throttle",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("window_started_at", _utc(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_garmin_login_throttle")),
    )
    op.create_table(
        "garmin_mfa_challenge",
        sa.Column("challenge_id_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("pending_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("mfa_method", sa.String(length=32), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_until", _utc(), nullable=True),
        sa.Column("expires_at", _utc(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("challenge_id_sha256", name=op.f("pk_garmin_mfa_challenge")),
        sa.UniqueConstraint("user_id", name=op.f("uq_garmin_mfa_challenge_user_id")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["garmin_authentication_state.user_id"],
            name=op.f("fk_garmin_mfa_challenge_user_id_garmin_authentication_state"),
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("garmin_mfa_challenge")
    op.drop_table("garmin_login_throttle")
    op.drop_index("ix_garmin_authentication_state_due", table_name="garmin_authentication_state")
    op.drop_table("garmin_authentication_state")
