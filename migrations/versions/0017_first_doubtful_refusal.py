"""When Garmin first refused a garth session's exchange in doubt: first_doubtful_refusal_at,
and LeaseNextSession's due order puts such sessions after every other.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

Garmin answers 401 to the exchange of a dead garth session and to one it refuses for our OAuth
consumer or clock alike; a replica believes the 401 only after it saw an exchange accepted
since it started (the garth provider's exchange_refusals), which it keeps in memory. A
replica that sees none (after a restart; with every garth session left dead) kept dead garth
sessions for ever, asking Garmin about each at every grant. first_doubtful_refusal_at is when
Garmin first refused the stored session's exchange in doubt since its tokens last changed: in
the row, so a restart does not forget it, and a refusal in doubt GARMIN_AUTH_GARTH_REFUSAL_GRACE
after it ends the session. Existing rows start with NULL, as if never refused. The due
index leads with whether the column is set, so LeaseNextSession grants every other due
session before one refused in doubt (which it would skip, asking Garmin again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
COLUMN = "first_doubtful_refusal_at"
DUE_INDEX = "ix_garmin_authentication_state_due"
KEEPALIVE_INDEX = "ix_garmin_authentication_state_keepalive"
ACTIVE_DI = sa.text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'")


ACTIVE_ONLY = sa.text("state = 'ACTIVE'")
# LeaseNextSession's order (0003), and now with the sessions refused in doubt after every
# other due one: enough dead garth sessions at the head of the due order used up every call's
# skips, and the users behind them were never granted.
SYNC_ORDER: list[sa.TextClause | str] = [
    sa.text("(last_synced_at IS NOT NULL)"),
    "last_synced_at",
    "user_id",
]
DUE_ORDER: list[sa.TextClause | str] = [sa.text(f"({COLUMN} IS NOT NULL)"), *SYNC_ORDER]


def _due_index(columns: list[sa.TextClause | str]) -> None:
    op.execute(f"DROP INDEX IF EXISTS {DUE_INDEX}")
    op.create_index(
        DUE_INDEX, TABLE, columns, postgresql_where=ACTIVE_ONLY, sqlite_where=ACTIVE_ONLY
    )


def _keepalive_index_kept() -> None:
    """SQLite's batch mode copies the table and loses its partial indexes: put keep-alive's
    back exactly as 0016 made it (the due index is made by _due_index)."""
    if op.get_bind().dialect.name != "sqlite":
        return
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
        # models.UTCDateTime: timestamptz on PostgreSQL, naive-UTC DATETIME on SQLite.
        table.add_column(sa.Column(COLUMN, sa.DateTime(timezone=True), nullable=True))
    _keepalive_index_kept()
    _due_index(DUE_ORDER)


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {DUE_INDEX}")
    with op.batch_alter_table(TABLE, recreate=_recreate()) as table:
        table.drop_column(COLUMN)
    _keepalive_index_kept()
    _due_index(SYNC_ORDER)
