"""The DI refresh token an import brought: imported_refresh_sha256, unique among ACTIVE rows.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07

DI refresh tokens rotate: two rows holding one refresh token are refreshed each by itself, and
the second refresh finds the token dead (invalid_grant) and ends its session; if Garmin answers
a reused token by revoking the newest one too (uncertain), both are lost. One token file
imported for two user ids made two such rows (the second import refreshed the token the
first row held, or sent the one its refresh had killed). imported_refresh_sha256 is the
SHA-256 of the refresh token an ImportSession brought, kept through the session's rotations;
an import of a token another user id's ACTIVE session was imported from is refused before
Garmin is asked, and the partial unique index refuses two such rows committed at once.
Existing rows start with NULL: their tokens are sealed, and a migration holds no key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
COLUMN = "imported_refresh_sha256"
IMPORTED_INDEX = "ix_garmin_authentication_state_imported_refresh"
IMPORTED_AND_ACTIVE = sa.text(f"state = 'ACTIVE' AND {COLUMN} IS NOT NULL")
DUE_INDEX = "ix_garmin_authentication_state_due"
KEEPALIVE_INDEX = "ix_garmin_authentication_state_keepalive"
ACTIVE_ONLY = sa.text("state = 'ACTIVE'")
ACTIVE_DI = sa.text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'")
# 0017's order.
DUE_ORDER: list[sa.TextClause | str] = [
    sa.text("(first_doubtful_refusal_at IS NOT NULL)"),
    sa.text("(last_synced_at IS NOT NULL)"),
    "last_synced_at",
    "user_id",
]


def _partial_indexes_kept() -> None:
    """SQLite's batch mode copies the table and loses its partial indexes: put the due and
    keep-alive ones back exactly as 0017 left them."""
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(f"DROP INDEX IF EXISTS {DUE_INDEX}")
    op.create_index(DUE_INDEX, TABLE, DUE_ORDER, sqlite_where=ACTIVE_ONLY)
    op.execute(f"DROP INDEX IF EXISTS {KEEPALIVE_INDEX}")
    op.create_index(
        KEEPALIVE_INDEX,
        TABLE,
        ["keepalive_failures", "refresh_token_expires_at"],
        sqlite_where=ACTIVE_DI,
    )


def _recreate() -> Literal["auto", "always"]:
    """SQLite: copy the table, so its DDL reads as the models write it (ALTER TABLE ADD
    COLUMN would append the column to the last line). PostgreSQL: plain ALTER TABLE (a
    nullable column without a default: no table rewrite)."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        # models.SHA256_HEX_LENGTH
        table.add_column(sa.Column(COLUMN, sa.String(64), nullable=True))
    _partial_indexes_kept()
    op.create_index(
        IMPORTED_INDEX,
        TABLE,
        [COLUMN],
        unique=True,
        postgresql_where=IMPORTED_AND_ACTIVE,
        sqlite_where=IMPORTED_AND_ACTIVE,
    )


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {IMPORTED_INDEX}")
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.drop_column(COLUMN)
    _partial_indexes_kept()
