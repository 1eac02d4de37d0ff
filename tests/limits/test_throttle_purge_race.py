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

import pytest
from sqlalchemy import insert

from auth_service.domain.signin_accounts import SignInAccounts
from auth_service.storage.database import session_factory
from auth_service.storage.models import GarminLoginThrottle, GarminSignInAccount
from auth_service.storage.throttle_repository import SqlThrottleRepository

from .purge_race import purge_after_insert

WINDOW = timedelta(hours=1)


@pytest.mark.timeout(30)
def test_a_purge_between_insert_and_lock_does_not_fail_the_login(pg_database_url: str) -> None:
    keys = SignInAccounts([b"k" * 32]).keys("ann", "shared@example.com")
    now = datetime.now(UTC)
    # The user's own counter runs; the account's window ended an hour ago.
    rows = [
        insert(GarminLoginThrottle).values(
            user_id="ann", window_started_at=now - timedelta(minutes=5), attempts=1
        ),
        insert(GarminSignInAccount).values(
            account_digest=keys.accounts[0], window_started_at=now - 2 * WINDOW, attempts=5
        ),
    ]
    with purge_after_insert(
        pg_database_url,
        rows=rows,
        table="garmin_signin_account",
        purge=lambda other: SqlThrottleRepository(other).purge_stale(now, WINDOW),
    ) as race:
        with session_factory(race.engine)() as session, session.begin():
            try:
                reached = SqlThrottleRepository(session).consume(keys, now, limit=5, window=WINDOW)
            except Exception as exc:  # noqa: BLE001
                pytest.fail(
                    f"Login's count failed with {type(exc).__name__} ({exc}) when housekeeping "
                    f"purged the account's stale counter ({race.purged} rows) under it: INTERNAL"
                )
        assert race.purged == [1]
        assert reached is None
