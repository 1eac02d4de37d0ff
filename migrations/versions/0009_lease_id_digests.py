"""Lease ids are stored as their SHA-256 digests, never in clear.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

Issue 14 (finding 4): a lease id is its holder's key, yet the session rows and the audit
trail kept it in clear (and ListAuditEvents showed it to viewers). From this revision the
service stores and compares only the lowercase hex SHA-256 of a lease id (the service's
domain module lease_ids), which fits the existing 64-character columns exactly, so the
schema does not change: this revision hashes the stored ids in place, on both tables.

A lease granted before the upgrade keeps working after it: its holder still presents the
id, whose digest is now what the row holds. Rows are hashed one distinct value at a time in
Python (SQLite has no SHA-256 function); only values that are not already a digest are
touched, so running it over a database a newer replica already wrote to is harmless.

Downgrade cannot recover ids from digests: the digests stay, so leases live at the time of a
downgrade answer LEASE_LOST to their holders (workers lease again; leases live minutes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("garmin_authentication_state", "garmin_audit_event")
# What the service writes from this revision on (migrations never import the service).
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def _digest(lease_id: str) -> str:
    return hashlib.sha256(lease_id.encode("utf-8")).hexdigest()


def upgrade() -> None:
    connection = op.get_bind()
    for table in TABLES:
        stored = connection.execute(
            sa.text(f"SELECT DISTINCT lease_id FROM {table} WHERE lease_id IS NOT NULL")  # noqa: S608 - fixed table names
        ).scalars()
        for lease_id in [value for value in stored if not _DIGEST.match(value)]:
            connection.execute(
                sa.text(f"UPDATE {table} SET lease_id = :digest WHERE lease_id = :lease_id"),  # noqa: S608 - fixed table names
                {"digest": _digest(lease_id), "lease_id": lease_id},
            )


def downgrade() -> None:
    # Digests cannot be turned back into ids; see the module docstring.
    pass
