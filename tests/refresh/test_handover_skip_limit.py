"""LeaseNextSession carrying a release skips at most 100 unreadable sessions too.

The handover (release_and_lease_next_checked) grants, and may skip, one row in the release's
own statement, then goes on with _lease_next: before, with the whole budget again, 1 + 100 =
101 skips in one call, where the README (Errors, DATA_LOSS SECRET_UNREADABLE) says "one call
skips up to 100 such sessions". Real gRPC replica, both databases."""

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


def test_a_handover_skips_at_most_100_unreadable_sessions(
    service_factory: ServiceFactory,
    di_accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    tokens = di_accounts.seed("0-readable")
    replica = service_factory.start()
    first = replica.call("LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"), "worker")
    assert first.lease.user_id == "0-readable"

    # Sealed under a key the replica does not have.
    other = SecretBox(Keyring.parse(Keyring.generate_key_value("gone")))
    now = datetime.now(UTC)
    for index in range(UNREADABLE):
        seed_active(db_sessionmaker, other, f"a-{index:03d}", tokens, now)

    answer = replica.call(
        "LeaseNextSession",
        pb.LeaseNextSessionRequest(
            holder="w", release=pb.ReleaseLeaseRequest(lease_id=first.lease.lease_id)
        ),
        "worker",
    )

    table = GarminAuthenticationState.__table__
    with db_sessionmaker() as session:
        attempted = session.execute(
            select(func.count()).where(
                table.c.last_sync_attempt_at.is_not(None), table.c.user_id.like("a-%")
            )
        ).scalar_one()
    assert not answer.HasField("lease")
    assert attempted == 100, f"one LeaseNextSession (with a release) skipped {attempted}"
