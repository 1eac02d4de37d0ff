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

import pytest
from sqlalchemy import insert

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.signin_accounts import SignInAccounts
from auth_service.services.signin_cooldown import SignInCooldown
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.database import session_factory
from auth_service.storage.models import GarminLoginThrottle
from auth_service.storage.secrets import SecretBox
from auth_service.storage.throttle_repository import SqlThrottleRepository
from auth_service.storage.unit_of_work import SqlStore

from .purge_race import purge_after_insert

WINDOW = timedelta(hours=1)
COOLDOWN_SECONDS = 900.0


@pytest.mark.timeout(30)
def test_a_purge_under_the_cooldown_start_does_not_lose_the_users_cooldown(
    pg_database_url: str, keyring: Keyring
) -> None:
    accounts = SignInAccounts([b"k" * 32])
    now = datetime.now(UTC)
    # The user's counter: its window ended an hour ago, no cooldown (stale).
    stale = insert(GarminLoginThrottle).values(
        user_id="ann", window_started_at=now - 2 * WINDOW, attempts=3
    )
    with purge_after_insert(
        pg_database_url,
        rows=[stale],
        table="garmin_login_throttle",
        purge=lambda other: SqlThrottleRepository(other).purge_stale(now, WINDOW),
    ) as race:
        db = session_factory(race.engine)
        uow = UnitsOfWork(SqlStore(db, SecretBox(keyring)), FakeClock(now))
        cooldown = SignInCooldown(COOLDOWN_SECONDS)
        # Garmin's sign-in answers 429 to ann's login to shared@example.com.
        with (
            pytest.raises(GarminRateLimited),
            cooldown.watching(uow, accounts.keys("ann", "shared@example.com")),
        ):
            raise GarminRateLimited(
                "Garmin is rate limiting (sign-in, HTTP 429)", None, GarminEndpoint.SSO
            )
        assert race.purged == [1]

        # ann signs in again at once, to another Garmin account: her cooldown holds.
        with uow() as unit:
            refusal = cooldown.refusal(unit, accounts.keys("ann", "other@example.com"))
        assert refusal is not None, (
            "housekeeping purged ann's stale counter under the cooldown's start; the UPDATE "
            "matched no row and her sign-in cooldown was lost"
        )
        assert refusal.retry_after_seconds == pytest.approx(COOLDOWN_SECONDS)
