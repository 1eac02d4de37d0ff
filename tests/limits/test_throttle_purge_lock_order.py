"""Housekeeping's purge of ended login windows never deadlocks with a Login counting its
attempt, also while the keyring holds two keys (every key rotation, for at least a day per
README), when an account has two digest rows.

A Login locks its rows in one order: the user's, then the account's digests sorted
(throttle_repository._named). The purge used to delete stale garmin_signin_account rows with
one DELETE that locked them in the table's physical order: with two digests per account the
two orders could cross, and PostgreSQL aborted one of the two transactions (DeadlockDetected:
the Login answered UNAVAILABLE DATABASE_UNAVAILABLE, or the housekeeping pass failed whole).
The purge now locks the stale rows in key order and passes over those a Login holds
(SKIP LOCKED): it never waits on one. Found by a read-only review, whose forced interleaving
(a third transaction holding the lower digest's row, the Login queued on it, the purge
started next) is kept here.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from auth_service.crypto import Keyring
from auth_service.domain.clock import SystemClock
from auth_service.domain.policies import LoginSettings
from auth_service.domain.signin_accounts import SignInAccounts
from auth_service.services.housekeeping import Housekeeping
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore

WINDOW = timedelta(hours=1)


def _waiters(engine: Engine, count: int, what: str) -> None:
    deadline = time.monotonic() + 10
    with engine.connect() as watcher:
        while True:
            waiting = watcher.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            watcher.rollback()
            if waiting >= count:
                return
            assert time.monotonic() < deadline, f"{what} never waited for a lock"
            time.sleep(0.01)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_housekeeping_purge_never_deadlocks_with_a_login_during_a_key_rotation(
    database_url: str,
) -> None:
    engine = create_engine_for(database_url)
    store = SqlStore(session_factory(engine), SecretBox(Keyring((("k1", os.urandom(32)),))))
    # Two keys in the ring (a rotation's add step): every account has two digests.
    accounts = SignInAccounts([os.urandom(32), os.urandom(32)])
    keys = accounts.keys("alice", "alice@example.com")
    low, high = keys.accounts
    now = datetime.now(UTC)
    stale = now - 2 * WINDOW
    try:
        with engine.begin() as c:
            # The user's own window is running (the purge leaves it alone); the account's two
            # rows ended long ago. The higher digest is written first, so it comes first in
            # the heap, where the purge's DELETE meets it first.
            c.execute(
                text(
                    "INSERT INTO garmin_login_throttle (user_id, window_started_at, attempts) "
                    "VALUES ('alice', :t, 1)"
                ),
                {"t": now - timedelta(minutes=1)},
            )
            for digest in (high, low):
                c.execute(
                    text(
                        "INSERT INTO garmin_signin_account (account_digest, window_started_at, "
                        "attempts) VALUES (:d, :t, 3)"
                    ),
                    {"d": digest, "t": stale},
                )
        errors: list[str] = []

        def login_counts_its_attempt() -> None:
            try:
                with store.transaction() as t:
                    t.throttle.consume(keys, datetime.now(UTC), limit=5, window=WINDOW)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"Login: {type(getattr(exc, 'orig', exc)).__name__}")

        def housekeeping_pass() -> None:
            try:
                Housekeeping(store, SystemClock(), LoginSettings(window_seconds=3600)).run_once()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"housekeeping: {type(getattr(exc, 'orig', exc)).__name__}")

        holder = engine.connect()
        holder.execute(
            text("SELECT 1 FROM garmin_signin_account WHERE account_digest = :d FOR UPDATE"),
            {"d": low},
        )
        login = threading.Thread(target=login_counts_its_attempt)
        login.start()
        _waiters(engine, 1, "the Login")
        purge = threading.Thread(target=housekeeping_pass)
        purge.start()
        # The purge waits on no row: it passes over the one held, while the Login waits.
        purge.join(10)
        assert not purge.is_alive(), "the housekeeping pass waited on a row a Login holds"
        holder.commit()
        holder.close()
        login.join(20)
        assert not errors, (
            f"a Login and a housekeeping pass deadlocked over an account's two digests: {errors}"
        )
        with engine.connect() as c:
            kept = c.execute(
                text("SELECT attempts FROM garmin_signin_account WHERE account_digest = :d"),
                {"d": low},
            ).scalar_one()
        # The row held during the purge was left alone, and the Login counted its attempt
        # (a window that had ended starts afresh).
        assert kept == 1
    finally:
        engine.dispose()
