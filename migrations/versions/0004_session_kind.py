"""Which sign-in a session comes from, and when its refresh token dies.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

DI OAuth2 sessions (Garmin's current sign-in) live on rotating refresh tokens that die about
30 days after their last use, so the service must know, without decrypting anything, which
sessions are DI and when each one's refresh token expires: keep-alive walks them in that
order. Stored sessions are all garth's (the only kind so far); their OAuth1 expiry is not
stored, so refresh_token_expires_at stays NULL for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "garmin_authentication_state"
# The session kinds the service knows (migrations never import the models).
SESSION_KINDS = ("GARTH", "DI_OAUTH2")
DUE_INDEX = "ix_garmin_authentication_state_due"
CHECK = "ck_garmin_authentication_state_session_kind"
KEEPALIVE_INDEX = "ix_garmin_authentication_state_keepalive"
ACTIVE_DI = sa.text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'")


def _due_index_kept() -> None:
    """SQLite's batch mode copies the table and loses 0003's partial, expression-based due
    index: put it back exactly as 0003 made it."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP INDEX IF EXISTS {DUE_INDEX}")
        op.create_index(
            DUE_INDEX,
            TABLE,
            [sa.text("(last_synced_at IS NOT NULL)"), "last_synced_at", "user_id"],
            sqlite_where=sa.text("state = 'ACTIVE'"),
        )


def upgrade() -> None:
    with op.batch_alter_table(TABLE) as table:
        table.add_column(sa.Column("session_kind", sa.String(length=16), nullable=True))
        table.add_column(
            sa.Column("refresh_token_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        table.create_check_constraint(op.f(CHECK), sa.column("session_kind").in_(SESSION_KINDS))
    _due_index_kept()
    state = sa.table(TABLE, sa.column("session_kind"), sa.column("session_ciphertext"))
    op.execute(
        state.update()
        .where(state.c.session_ciphertext.is_not(None))
        .values(session_kind=SESSION_KINDS[0])
    )
    op.create_index(
        KEEPALIVE_INDEX,
        TABLE,
        ["refresh_token_expires_at"],
        postgresql_where=ACTIVE_DI,
        sqlite_where=ACTIVE_DI,
    )


def downgrade() -> None:
    op.drop_index(KEEPALIVE_INDEX, table_name=TABLE)
    with op.batch_alter_table(TABLE) as table:
        table.drop_constraint(op.f(CHECK), type_="check")
        table.drop_column("refresh_token_expires_at")
        table.drop_column("session_kind")
    _due_index_kept()
