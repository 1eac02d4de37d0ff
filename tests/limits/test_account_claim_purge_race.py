"""Housekeeping purging an account's ended cooldown row between the gate's "insert if
missing" and its conditional UPDATE of that row: the claim of the account's one call failed,
and the gate answered GARMIN_RATE_LIMITED "another sign-in or import of this account is with
Garmin right now" although nothing was in flight.

INSERT ... ON CONFLICT DO NOTHING takes no lock on the row it finds; another replica's
housekeeping (purge_ended: cooldown and call both over) could delete it and commit before the
UPDATE, which then matched no row, and limit_repository.claim_call took that for "refused".
start_account_cooldown already retried for exactly this race ("None: housekeeping purged the
ended row after our insert met it"); claim_call did not (found by review). Now an UPDATE
that matched nothing because the row is gone goes back to the insert (at most 3 times).
The same shape lost a sign-in cooldown: test_signin_cooldown_purge_race.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import GarminEndpoint, GarminLimitSettings
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.database import session_factory
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from auth_service.storage.models import GarminAccountLimit
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore

from .purge_race import purge_after_insert

LIMITS = GarminLimitSettings()


@pytest.mark.timeout(30)
def test_a_purge_between_insert_and_claim_does_not_refuse_the_call(
    pg_database_url: str, keyring: Keyring
) -> None:
    now = datetime.now(UTC)
    # A 429's cooldown that ended a minute ago; no call in flight.
    cooled = insert(GarminAccountLimit).values(
        user_id="ann",
        endpoint=GarminEndpoint.DI_TOKEN.value,
        cooling_until=now - timedelta(minutes=1),
        cooling_started_at=now - timedelta(minutes=2),
    )
    with purge_after_insert(
        pg_database_url,
        rows=[cooled],
        table="garmin_account_limit",
        purge=lambda other: SqlGarminLimitRepository(other).purge_ended(now),
    ) as race:
        db = session_factory(race.engine)
        gate = GarminGate(UnitsOfWork(SqlStore(db, SecretBox(keyring)), FakeClock(now)), LIMITS)
        try:
            # A validation (or sign-in, ticket exchange) claims the account's one call.
            gate.admit("ann", (GarminEndpoint.CONNECT_API,), exclusive=True)
        except GarminRateLimited as refused:
            pytest.fail(
                f"refused ({refused.held_back}: {refused}) with no call in flight, because "
                f"housekeeping purged the account's ended row ({race.purged}) under the claim"
            )
        assert race.purged == [1]
