"""One LeaseNextSession skips at most 100 unreadable sessions, as the README says.

README (Errors, DATA_LOSS SECRET_UNREADABLE): LeaseNextSession "skips such a session for the
next one (each skip counts as that user's sync attempt; one call skips up to 100 such
sessions ... before answering that nothing is due)". Before, the loop ran MAX_SKIPPED_ROWS + 1
times and skipped on every pass: one call granted, released and marked attempted 101
sessions. Real gRPC replica, both databases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.storage.models import GarminAuthenticationState
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import ServiceFactory
from tests.leases import seed_active
from tests.refresh import DiAccounts

pytestmark = pytest.mark.timeout(120)

UNREADABLE = 105


def test_one_call_skips_at_most_100_unreadable_sessions(
    service_factory: ServiceFactory,
    di_accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    tokens = di_accounts.seed("z-readable")
    # Sealed under a key the replicas do not have (left out of GARMIN_AUTH_ENCRYPTION_KEYS).
    other = SecretBox(Keyring.parse(Keyring.generate_key_value("gone")))
    now = datetime.now(UTC)
    for index in range(UNREADABLE):
        seed_active(db_sessionmaker, other, f"a-{index:03d}", tokens, now)
    replica = service_factory.start()

    answer = replica.call("LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"), "worker")

    table = GarminAuthenticationState.__table__
    with db_sessionmaker() as session:
        attempted = session.execute(
            select(func.count()).where(table.c.last_sync_attempt_at.is_not(None))
        ).scalar_one()
    assert not answer.HasField("lease")
    assert attempted == 100, f"one LeaseNextSession skipped {attempted} unreadable sessions"
