"""A replica's machine clock stepped (NTP) between two readings of the database's time does not
make it take over a live lease: DatabaseClock counts on from its last reading on the monotonic
clock. Before, it added the last measured offset to the stepped wall clock, so for up to
resync_seconds (30 s) the replica's "now" was off by the whole step, and it took over a lease
the database's time said was live: two live leases on one user (fencing 1 -> 2). Found by a
read-only review."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.errors import LeaseHeld
from auth_service.storage.clock import DatabaseClock
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.provider import GarthUpstream
from tests.leases import GarminAccounts, build_service, read_row

pytestmark = pytest.mark.postgres

USER = "step-user"
TTL = timedelta(seconds=120)


@pytest.fixture
def backend() -> str:
    return "postgresql"


class MachineClock:
    """This machine's wall clock, which NTP may step."""

    def __init__(self) -> None:
        self.step = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.step


@pytest.fixture
def second_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


def test_a_wall_clock_step_on_one_replica_hands_out_no_second_live_lease(
    engine: Engine,
    second_engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    upstream: GarthUpstream,
    accounts: GarminAccounts,
) -> None:
    accounts.seed(USER, timedelta(days=10))
    machine_b = MachineClock()
    replica_a = build_service(db_sessionmaker, box, upstream, DatabaseClock(engine))
    clock_b = DatabaseClock(second_engine, base=machine_b)  # default resync: 30 s
    replica_b = build_service(session_factory(second_engine), box, upstream, clock_b)

    first = replica_a.lease_session(USER, "worker-a", TTL)
    # Replica B agrees the lease is live (this also measures its offset).
    with pytest.raises(LeaseHeld):
        replica_b.lease_session(USER, "worker-b", TTL)

    # NTP steps replica B's machine clock 5 minutes forward. The database's time has not moved:
    # worker-a's lease has about two minutes left.
    machine_b.step = timedelta(minutes=5)
    try:
        second = replica_b.lease_session(USER, "worker-b", TTL)
    except LeaseHeld:
        second = None
    row = read_row(db_sessionmaker, USER)
    real_now = datetime.now(UTC)
    second_fencing = None if second is None else second.lease.fencing_token
    assert second_fencing is None, (
        "replica B (machine clock stepped +5 min, offset measured before the step) took over "
        f"worker-a's lease that expires at {first.lease.expires_at.isoformat()} by the database's "
        f"time (real now {real_now.isoformat()}): fencing {first.lease.fencing_token} -> "
        f"{second_fencing}, stored expiry {row.lease_expires_at}; "
        "two holders hold live leases on one user"
    )
