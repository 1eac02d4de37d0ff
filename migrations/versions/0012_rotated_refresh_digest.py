"""Digests of the DI refresh tokens the latest rotations replaced: rotated_refresh_sha256.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

A client that retried ImportSession with the same token file while (or just after) the
first import's refresh rotated the file's refresh token had the dead token installed again
over the live pair, whose store was then dropped; the next refresh sent the dead token, Garmin
answered invalid_grant and the account's session ended. An import presenting the refresh
token the row holds, or one its latest rotations replaced (this column: up to four SHA-256
prefixes of 16 hex digits, newest first; never the tokens), is now a retry and installs
nothing. Rows written before this revision have NULL: only a rotation after it records one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
DUE_INDEX = "ix_garmin_authentication_state_due"
KEEPALIVE_INDEX = "ix_garmin_authentication_state_keepalive"
ACTIVE_DI = sa.text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'")
# A SHA-256 digest in lowercase hex.
SHA256_HEX_LENGTH = 64


def _partial_indexes_kept() -> None:
    """SQLite's batch mode copies the table and loses its partial indexes: put them back
    exactly as 0003 and 0004 made them."""
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(f"DROP INDEX IF EXISTS {DUE_INDEX}")
    op.execute(f"DROP INDEX IF EXISTS {KEEPALIVE_INDEX}")
    op.create_index(
        DUE_INDEX,
        TABLE,
        [sa.text("(last_synced_at IS NOT NULL)"), "last_synced_at", "user_id"],
        sqlite_where=sa.text("state = 'ACTIVE'"),
    )
    op.create_index(KEEPALIVE_INDEX, TABLE, ["refresh_token_expires_at"], sqlite_where=ACTIVE_DI)


def _recreate() -> Literal["auto", "always"]:
    """SQLite: copy the table, so its DDL reads as the models write it (ALTER TABLE ADD
    COLUMN would append the column to the last line). PostgreSQL: plain ALTER TABLE."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.add_column(
            sa.Column("rotated_refresh_sha256", sa.String(SHA256_HEX_LENGTH), nullable=True)
        )
    _partial_indexes_kept()


def downgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.drop_column("rotated_refresh_sha256")
    _partial_indexes_kept()
