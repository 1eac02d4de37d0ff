"""The service ticket an ExchangeServiceTicket exchanged: exchanged_ticket_sha256.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-08

A service ticket is single-use. A caller that lost ExchangeServiceTicket's answer (its
deadline, a cut connection) and sent the same ticket again had it sent to Garmin again,
which refused it (SERVICE_TICKET_REJECTED) while the session it had issued was stored.
exchanged_ticket_sha256 is the SHA-256 of the service URL and ticket the row's session was
exchanged from, kept through its rotations and cleared by any other sign-in or import: the
same ticket and URL for the same user id are answered from the row, without Garmin.
Existing rows start with NULL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
COLUMN = "exchanged_ticket_sha256"
DUE_INDEX = "ix_garmin_authentication_state_due"
KEEPALIVE_INDEX = "ix_garmin_authentication_state_keepalive"
IMPORTED_INDEX = "ix_garmin_authentication_state_imported_refresh"
ACTIVE_ONLY = sa.text("state = 'ACTIVE'")
ACTIVE_DI = sa.text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'")
IMPORTED_AND_ACTIVE = sa.text("state = 'ACTIVE' AND imported_refresh_sha256 IS NOT NULL")
# 0017's order.
DUE_ORDER: list[sa.TextClause | str] = [
    sa.text("(first_doubtful_refusal_at IS NOT NULL)"),
    sa.text("(last_synced_at IS NOT NULL)"),
    "last_synced_at",
    "user_id",
]


def _partial_indexes_kept() -> None:
    """SQLite's batch mode copies the table and loses its partial indexes: put them back
    exactly as 0018 left them."""
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
    op.execute(f"DROP INDEX IF EXISTS {IMPORTED_INDEX}")
    op.create_index(
        IMPORTED_INDEX,
        TABLE,
        ["imported_refresh_sha256"],
        unique=True,
        sqlite_where=IMPORTED_AND_ACTIVE,
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


def downgrade() -> None:
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.drop_column(COLUMN)
    _partial_indexes_kept()
