"""Housekeeping purging a user's stale login counter between the sign-in cooldown's "insert
if missing" and its UPDATE of that row: the user's cooldown after Garmin's 429 was lost.

SignInCooldown starts the cooldown on the user's row and on its Garmin account's
(throttle_repository.start_cooldown): INSERT ... ON CONFLICT DO NOTHING, then an UPDATE of
the row. The insert takes no lock on the row it finds; another replica's housekeeping
(purge_stale: the counter's window ended, no cooldown running) could delete it and commit
before the UPDATE, which then matched no row, and nothing said so. The user's row is the one
at risk: the account's is held by the sign-in's claim while the cooldown starts. The user
could then sign in again at once, with another Garmin account (the cooldown holds back the
user and every user id of the same account), straight into Garmin's block. Found by review
beside the same race in the gate's claim of an account's call
(test_account_claim_purge_race). Now the row is locked as the login count locks it
(inserted again when purged), so housekeeping passes it over.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.signin_accounts import SignInAccounts
from auth_service.services.signin_cooldown import SignInCooldown
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.models import GarminLoginThrottle
from auth_service.storage.secrets import SecretBox
from auth_service.storage.throttle_repository import SqlThrottleRepository
from auth_service.storage.unit_of_work import SqlStore

WINDOW = timedelta(hours=1)
COOLDOWN_SECONDS = 900.0


@pytest.mark.timeout(30)
def test_a_purge_under_the_cooldown_start_does_not_lose_the_users_cooldown(
    pg_database_url: str, keyring: Keyring
) -> None:
    accounts = SignInAccounts([b"k" * 32])
    now = datetime.now(UTC)
    engine = create_engine_for(pg_database_url)
    housekeeping_engine = create_engine_for(pg_database_url)
    try:
        with session_factory(engine)() as setup, setup.begin():
            # The user's counter: its window ended an hour ago, no cooldown (stale).
            setup.execute(
                insert(GarminLoginThrottle).values(
                    user_id="ann", window_started_at=now - 2 * WINDOW, attempts=3
                )
            )
        purged: list[int] = []

        def purge_after_insert(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if purged or "INSERT INTO garmin_login_throttle" not in statement:
                return
            # Another replica's housekeeping pass, right now.
            with Session(housekeeping_engine) as other, other.begin():
                purged.append(SqlThrottleRepository(other).purge_stale(now, WINDOW))

        event.listen(engine, "after_cursor_execute", purge_after_insert)
        uow = UnitsOfWork(SqlStore(session_factory(engine), SecretBox(keyring)), FakeClock(now))
        cooldown = SignInCooldown(COOLDOWN_SECONDS)
        # Garmin's sign-in answers 429 to ann's login to shared@example.com.
        with (
            pytest.raises(GarminRateLimited),
            cooldown.watching(uow, accounts.keys("ann", "shared@example.com")),
        ):
            raise GarminRateLimited(
                "Garmin is rate limiting (sign-in, HTTP 429)", None, GarminEndpoint.SSO
            )
        assert purged == [1]

        # ann signs in again at once, to another Garmin account: her cooldown holds.
        with uow() as unit:
            refusal = cooldown.refusal(unit, accounts.keys("ann", "other@example.com"))
        assert refusal is not None, (
            "housekeeping purged ann's stale counter under the cooldown's start; the UPDATE "
            "matched no row and her sign-in cooldown was lost"
        )
        assert refusal.retry_after_seconds == pytest.approx(COOLDOWN_SECONDS)
    finally:
        engine.dispose()
        housekeeping_engine.dispose()
