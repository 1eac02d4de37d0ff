"""Upgrading from each earlier revision, with rows in every table, to head keeps every row
and ends with no drift from the models (SQLite and PostgreSQL; on SQLite, no foreign key left
dangling by a table copy). Written by a review of the operator's path (7 Dec): it passed, and
is kept so a revision that rebuilds a table cannot lose rows unnoticed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import select, text

from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.schema import alembic_config, check_no_drift, head_revision

REVISIONS = [f"{n:04d}" for n in range(1, int(head_revision() or "1"))]
T = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _insert(url: str, revision: str) -> None:
    rev = int(revision)
    engine = create_engine_for(url)
    try:
        with engine.begin() as c:
            for i, state in enumerate(["ACTIVE", "MFA_PENDING", "AUTH_EXPIRED", "ACTIVE"]):
                c.execute(
                    text(
                        "INSERT INTO garmin_authentication_state (user_id, state, "
                        "session_ciphertext, session_version, fencing_token, lease_id, "
                        "lease_holder, lease_acquired_at, lease_expires_at, last_synced_at, "
                        "synced_through, created_at, updated_at) VALUES (:u, :s, :blob, 3, 7, "
                        ":lease, 'w', :t, :exp, :t, :t, :t, :t)"
                    ),
                    {
                        "u": f"user-{i}",
                        "s": state,
                        "blob": b"\x01\x02k1" + bytes(40) if state != "MFA_PENDING" else None,
                        "lease": f"lease-{i}" if i == 0 else None,
                        "t": T,
                        "exp": T + timedelta(days=3650),
                    },
                )
            c.execute(
                text(
                    "INSERT INTO garmin_mfa_challenge (challenge_id_sha256, user_id, "
                    "pending_ciphertext, mfa_method, failed_attempts, expires_at, created_at) "
                    "VALUES (:h, 'user-1', :blob, 'email', 0, :exp, :t)"
                ),
                {
                    "h": "a" * 64,
                    "blob": b"\x01\x02k1" + bytes(40),
                    "exp": T + timedelta(days=3650),
                    "t": T,
                },
            )
            c.execute(
                text(
                    "INSERT INTO garmin_login_throttle (user_id, window_started_at, attempts) "
                    "VALUES ('user-1', :t, 2)"
                ),
                {"t": T},
            )
            if rev >= 2:
                c.execute(
                    text(
                        "INSERT INTO garmin_audit_event (occurred_at, caller, rpc, user_id, "
                        "outcome_code, outcome_reason, lease_id, fencing_token) VALUES "
                        "(:t, 'c', 'LeaseSession', 'user-0', 'OK', 'OK', 'lease-0', 7)"
                    ),
                    {"t": T},
                )
            if rev >= 8:
                c.execute(
                    text(
                        "INSERT INTO garmin_account_limit (user_id, endpoint, cooling_until) "
                        "VALUES ('user-0', 'sso', :t)"
                    ),
                    {"t": T + timedelta(days=3650)},
                )
            if rev >= 10:
                c.execute(
                    text(
                        "INSERT INTO garmin_session_change (position, occurred_at, user_id, rpc, "
                        "state, status) VALUES (1, :t, 'user-0', 'Login', 'ACTIVE', '{}')"
                    ),
                    {"t": T},
                )
    finally:
        engine.dispose()


@pytest.mark.parametrize("revision", REVISIONS)
def test_upgrade_from_each_revision_keeps_every_row(empty_database_url: str, revision: str) -> None:
    url = empty_database_url
    command.upgrade(alembic_config(url), revision)
    _insert(url, revision)
    command.upgrade(alembic_config(url), "head")
    check_no_drift(url)
    engine = create_engine_for(url)
    try:
        with session_factory(engine)() as s:
            rows = s.scalars(select(GarminAuthenticationState)).all()
            assert sorted(r.user_id for r in rows) == [f"user-{i}" for i in range(4)]
            challenges = s.scalars(select(GarminMfaChallenge)).all()
            assert [c.user_id for c in challenges] == ["user-1"], "MFA challenge lost"
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM garmin_login_throttle")).scalar_one() == 1
            if int(revision) >= 2:
                assert c.execute(text("SELECT count(*) FROM garmin_audit_event")).scalar_one() == 1
            fk = None
            if engine.dialect.name == "sqlite":
                fk = c.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                assert fk == []
    finally:
        engine.dispose()
