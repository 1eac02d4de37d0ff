"""Which clock rules: the database's (auth_service.storage.clock). Two replicas on PostgreSQL whose
machine clocks disagree by a minute (one 30 s ahead, one 30 s behind; the database runs on
this machine's true clock) agree on when a lease expires and when an MFA challenge expires,
to within the offset measurement, because each reads the database's time through a
DatabaseClock. (tests/storage/test_database_clock.py checks the clock itself; this checks the
decisions the replicas make with it.)

A control shows what the test guards against: with their machine clocks the same two
replicas let one worker take over another's live lease at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2
from sqlalchemy import Engine

from auth_service.domain.clock import Clock
from auth_service.domain.policies import LoginSettings
from auth_service.storage.clock import DatabaseClock
from auth_service.storage.database import create_engine_for
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure

from . import PASSWORD, SkewedClock, record_figures, session_proto

pytestmark = [pytest.mark.timeout(60), pytest.mark.postgres]

SKEW = timedelta(seconds=30)
LEASE_TTL_SECONDS = 5  # the shortest a caller may ask for
CHALLENGE_TTL_SECONDS = 3
# The replicas' offsets are measured over a round trip on this machine: a few milliseconds.
AGREEMENT = timedelta(milliseconds=250)

MakeClock = Callable[[timedelta], Clock]
T = TypeVar("T")


@pytest.fixture
def backend() -> str:
    return "postgresql"


@pytest.fixture
def database_clock(database_url: str) -> Iterator[MakeClock]:
    """A DatabaseClock over a machine clock skewed by the given amount."""
    engines: list[Engine] = []

    def make(skew: timedelta) -> Clock:
        engine = create_engine_for(database_url)
        engines.append(engine)
        return DatabaseClock(engine, base=SkewedClock(skew))

    yield make
    for engine in engines:
        engine.dispose()


def real_now() -> datetime:
    return datetime.now(UTC)


def timed(call: Callable[[], T]) -> tuple[T, datetime, datetime]:
    """call(), and the real time just before and just after it."""
    before = real_now()
    result = call()
    return result, before, real_now()


def decided_between(moment: datetime, before: datetime, after: datetime, offset: float) -> None:
    """`moment` is `offset` seconds after a decision taken between `before` and `after` (in
    real time, to within the replicas' measured offsets)."""
    shift = timedelta(seconds=offset)
    assert before + shift - AGREEMENT <= moment <= after + shift + AGREEMENT, (
        moment,
        before,
        after,
    )


def lease(replica: Replica, holder: str) -> Any:
    request = pb.LeaseSessionRequest(
        user_id="u", holder=holder, ttl=duration_pb2.Duration(seconds=LEASE_TTL_SECONDS)
    )
    return replica.call("LeaseSession", request, role="worker")


def seeded(service_factory: ServiceFactory, make: MakeClock) -> tuple[Replica, Replica]:
    ahead, behind = (
        service_factory.start(clock=make(SKEW)),
        service_factory.start(clock=make(-SKEW)),
    )
    ahead.call("ImportSession", pb.ImportSessionRequest(user_id="u", session=session_proto("u")))
    return ahead, behind


def test_replicas_60s_apart_agree_on_lease_expiry(
    service_factory: ServiceFactory, database_clock: MakeClock
) -> None:
    ahead, behind = seeded(service_factory, database_clock)

    answer, before, after = timed(lambda: lease(behind, "worker-a"))
    granted = answer.lease
    decided_between(granted.expires_at.ToDatetime(tzinfo=UTC), before, after, LEASE_TTL_SECONDS)
    # The replica whose machine is 30 s ahead still sees the lease as live ...
    held = expect_failure(lambda: lease(ahead, "worker-b"))
    assert (held.code, held.reason) == (grpc.StatusCode.ABORTED, "LEASE_HELD")
    # ... and both show the same expiry.
    for replica in (ahead, behind):
        shown = replica.call("GetStatus", pb.GetStatusRequest(user_id="u")).status.lease
        assert shown.expires_at == granted.expires_at
    # A renewal through the replica ahead extends it by the ttl in database time.
    renewal = pb.RenewLeaseRequest(
        lease_id=granted.lease_id, ttl=duration_pb2.Duration(seconds=LEASE_TTL_SECONDS)
    )
    answer, before, after = timed(lambda: ahead.call("RenewLease", renewal, role="worker"))
    expires = answer.lease.expires_at.ToDatetime(tzinfo=UTC)
    decided_between(expires, before, after, LEASE_TTL_SECONDS)

    # The takeover happens when the lease really expires, not 30 s early or late.
    taken_at = None
    deadline = time.monotonic() + LEASE_TTL_SECONDS + 5
    while taken_at is None and time.monotonic() < deadline:
        try:
            taken = lease(ahead, "worker-b").lease
            taken_at = real_now()
        except grpc.RpcError:
            time.sleep(0.05)
    assert taken_at is not None
    # Granted at (database) time >= the expiry, and seen by us soon after it.
    assert taken.acquired_at.ToDatetime(tzinfo=UTC) >= expires
    assert expires <= taken_at + AGREEMENT
    assert taken_at <= expires + timedelta(seconds=2)
    assert taken.fencing_token == granted.fencing_token + 1
    # The replica behind, whose machine says 30 s remain, agrees the old lease is gone.
    lost = expect_failure(
        lambda: behind.call(
            "RenewLease", pb.RenewLeaseRequest(lease_id=granted.lease_id), role="worker"
        )
    )
    assert (lost.code, lost.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    record_figures("test_clock_skew_leases", skew_seconds=2 * SKEW.total_seconds())


def test_replicas_60s_apart_agree_on_challenge_expiry(
    service_factory: ServiceFactory, database_clock: MakeClock, garmin: GarminEmulator
) -> None:
    short = LoginSettings(
        limit=20, window_seconds=3600, mfa_challenge_ttl_seconds=CHALLENGE_TTL_SECONDS
    )
    ahead = service_factory.start(clock=database_clock(SKEW), login=short)
    behind = service_factory.start(clock=database_clock(-SKEW), login=short)
    for user in ("ann", "bob"):
        garmin.add_user(f"{user}@example.com", PASSWORD, mfa=True, mfa_code="112358")

    def login(replica: Replica, user: str) -> Any:
        request = pb.LoginRequest(user_id=user, email=f"{user}@example.com", password=PASSWORD)
        return replica.call("Login", request)

    def submit(replica: Replica, challenge_id: str) -> Any:
        request = pb.SubmitMfaRequest(mfa_challenge_id=challenge_id, code="112358")
        return replica.call("SubmitMfa", request)

    # Issued by the replica behind; the one ahead (its machine says it expired 27 s ago)
    # completes it.
    first, before, after = timed(lambda: login(behind, "ann"))
    decided_between(
        first.mfa_expires_at.ToDatetime(tzinfo=UTC), before, after, CHALLENGE_TTL_SECONDS
    )
    assert submit(ahead, first.mfa_challenge_id).status.state == pb.SESSION_STATE_ACTIVE

    # Issued by the replica ahead; once it really expired, the one behind (its machine says
    # 27 s remain) refuses it, and both show the user back to NOT_CONNECTED.
    second, before, after = timed(lambda: login(ahead, "bob"))
    expires = second.mfa_expires_at.ToDatetime(tzinfo=UTC)
    decided_between(expires, before, after, CHALLENGE_TTL_SECONDS)
    time.sleep(max(0.0, (expires - real_now()).total_seconds()) + 0.3)
    gone = expect_failure(lambda: submit(behind, second.mfa_challenge_id))
    assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND")
    for replica in (ahead, behind):
        status = replica.call("GetStatus", pb.GetStatusRequest(user_id="bob")).status
        assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    record_figures("test_clock_skew_challenges", skew_seconds=2 * SKEW.total_seconds())


def test_control_machine_clocks_60s_apart_would_hand_out_a_live_lease(
    service_factory: ServiceFactory,
) -> None:
    """What the database clock prevents: each replica deciding on its own machine's time."""
    ahead, behind = seeded(service_factory, SkewedClock)
    first = lease(behind, "worker-a").lease
    second = lease(ahead, "worker-b").lease  # at once: "expired" 27 s ago by this clock
    assert second.fencing_token == first.fencing_token + 1
