"""Housekeeping purging an account's stale counter between Login's "insert if missing" and its
"SELECT ... FOR UPDATE" of that row: the select finds nothing and `.one()` raises, so Login
answers INTERNAL instead of counting the attempt on a fresh window.

INSERT ... ON CONFLICT DO NOTHING takes no lock on the row it finds, so a housekeeping pass on
another replica may delete that (stale: its window ended, no cooldown) row and commit before
the select; on PostgreSQL (READ COMMITTED) the select then sees no row. d69ea53 added the
account's row to the one (the user's) this already applied to (found by review). Now the
insert and the lock are tried again. README: bad luck in timing never answers INTERNAL ("that
code ... means a bug").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from auth_service.domain.signin_accounts import SignInAccounts
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.models import GarminLoginThrottle, GarminSignInAccount
from auth_service.storage.throttle_repository import SqlThrottleRepository

WINDOW = timedelta(hours=1)


@pytest.mark.timeout(30)
def test_a_purge_between_insert_and_lock_does_not_fail_the_login(pg_database_url: str) -> None:
    keys = SignInAccounts([b"k" * 32]).keys("ann", "shared@example.com")
    now = datetime.now(UTC)
    login_engine = create_engine_for(pg_database_url)
    housekeeping_engine = create_engine_for(pg_database_url)
    try:
        with session_factory(login_engine)() as setup, setup.begin():
            # The user's own counter runs; the account's window ended an hour ago.
            setup.execute(
                insert(GarminLoginThrottle).values(
                    user_id="ann", window_started_at=now - timedelta(minutes=5), attempts=1
                )
            )
            setup.execute(
                insert(GarminSignInAccount).values(
                    account_digest=keys.accounts[0],
                    window_started_at=now - 2 * WINDOW,
                    attempts=5,
                )
            )

        purged: list[int] = []

        def purge_after_account_insert(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if purged or "INSERT INTO garmin_signin_account" not in statement:
                return
            # Another replica's housekeeping pass, right now.
            with Session(housekeeping_engine) as other, other.begin():
                purged.append(SqlThrottleRepository(other).purge_stale(now, WINDOW))

        event.listen(login_engine, "after_cursor_execute", purge_after_account_insert)
        with session_factory(login_engine)() as session, session.begin():
            try:
                reached = SqlThrottleRepository(session).consume(keys, now, limit=5, window=WINDOW)
            except Exception as exc:  # noqa: BLE001
                pytest.fail(
                    f"Login's count failed with {type(exc).__name__} ({exc}) when housekeeping "
                    f"purged the account's stale counter ({purged} rows) under it: INTERNAL"
                )
        assert purged == [1]
        assert reached is None
    finally:
        login_engine.dispose()
        housekeeping_engine.dispose()
