"""Leases under concurrency: two service replicas (two engines on one database) and many
threads. The rules must hold because the database enforces them, not because of luck."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import LeaseHeld, LeaseLost
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import LeaseGrant, SessionState
from auth_service.services.lease_handover import LeaseHandover, LeaseRelease
from auth_service.services.leases import LeaseService
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.provider import GarthUpstream

from . import GarminAccounts, build_service, read_row, stored_tokens

T = TypeVar("T")
LONG = timedelta(days=2)


@pytest.fixture
def second_engine(database_url: str) -> Iterator[Engine]:
    """A second replica's own engine (own pool, own connections) on the same database."""
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def replicas(
    db_sessionmaker: sessionmaker[Session],
    second_engine: Engine,
    box: SecretBox,
    upstream: GarthUpstream,
    clock: FakeClock,
) -> tuple[LeaseService, LeaseService]:
    return (
        build_service(db_sessionmaker, box, upstream, clock),
        build_service(session_factory(second_engine), box, upstream, clock),
    )


def _all_at_once(count: int, action: Callable[[int], T]) -> list[T | Exception]:
    """Run action(0..count-1) on `count` threads released together by a barrier."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T | Exception:
        barrier.wait()
        try:
            return action(index)
        except (LeaseHeld, LeaseLost) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def _each_drained_once_per_round(
    drain: Callable[[int], list[str]], users: list[str], clock: FakeClock, interval: timedelta
) -> None:
    """Two rounds of 8 workers draining at once: every user leased by exactly one of them."""
    for _round in range(2):
        clock.advance(interval.total_seconds() + 1)
        per_worker = [r for r in _all_at_once(8, drain) if isinstance(r, list)]
        assert len(per_worker) == 8
        counts = Counter(user for leased in per_worker for user in leased)
        assert sorted(counts) == users
        assert set(counts.values()) == {1}
        assert sum(1 for leased in per_worker if leased) > 1  # really concurrent


def test_32_threads_on_two_replicas_get_exactly_one_grant(
    replicas: tuple[LeaseService, LeaseService],
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    accounts.seed("u-1", LONG)
    tokens_seen = []
    for _round in range(3):
        results = _all_at_once(
            32,
            lambda i: replicas[i % 2].lease_session("u-1", f"worker-{i}", timedelta(seconds=60)),
        )
        grants = [r for r in results if isinstance(r, LeaseGrant)]
        refusals = [r for r in results if isinstance(r, LeaseHeld)]
        assert len(grants) == 1
        assert len(refusals) == 31
        assert read_row(db_sessionmaker, "u-1").lease_id == lease_digest(grants[0].lease.lease_id)
        tokens_seen.append(grants[0].lease.fencing_token)
        clock.advance(60)  # the lease expires: the next round is a takeover
    assert tokens_seen == [1, 2, 3]


def test_8_workers_drain_200_users_each_exactly_once_per_round(
    replicas: tuple[LeaseService, LeaseService], accounts: GarminAccounts, clock: FakeClock
) -> None:
    users = [f"user-{i:03d}" for i in range(200)]
    for user_id in users:
        accounts.seed(user_id, LONG)
    interval = timedelta(minutes=10)

    def drain(worker: int) -> list[str]:
        service = replicas[worker % 2]
        leased = []
        while (grant := service.lease_next_session(f"w{worker}", None, interval)) is not None:
            leased.append(grant.lease.user_id)
            # Half the syncs succeed, half fail: both count as this round's attempt.
            synced = clock.now() if len(leased) % 2 else None
            service.release_lease(grant.lease.lease_id, synced)
        return leased

    _each_drained_once_per_round(drain, users, clock, interval)


def test_8_workers_handing_over_drain_80_users_each_exactly_once_per_round(
    replicas: tuple[LeaseService, LeaseService], accounts: GarminAccounts, clock: FakeClock
) -> None:
    """What `sync_worker --all` does: each release rides on the call that leases the next
    user (on PostgreSQL one statement whose grant skips rows other workers hold locked)."""
    users = [f"user-{i:03d}" for i in range(80)]
    for user_id in users:
        accounts.seed(user_id, LONG)
    interval = timedelta(minutes=10)

    def drain(worker: int) -> list[str]:
        service = replicas[worker % 2]
        handover = LeaseHandover(service)
        holder = f"w{worker}"
        grant = service.lease_next_session(holder, None, interval)
        leased = []
        while grant is not None:
            leased.append(grant.lease.user_id)
            time.sleep(0.002)  # the sync itself: other workers' calls run meanwhile
            synced = clock.now() if len(leased) % 2 else None
            release = LeaseRelease(grant.lease.lease_id, synced)
            grant = handover.release_and_lease_next(release, holder, None, interval).grant
        return leased

    _each_drained_once_per_round(drain, users, clock, interval)


def test_paused_holder_is_refused_after_takeover(
    replicas: tuple[LeaseService, LeaseService],
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    replica_a, replica_b = replicas
    accounts.seed("u-1", LONG)
    paused = replica_a.lease_session("u-1", "worker-a", timedelta(seconds=30))
    clock.advance(31)  # worker-a is paused (GC, network) past its lease

    taker = replica_b.lease_session("u-1", "worker-b", timedelta(seconds=60))
    newer = accounts.refreshed(taker.tokens)
    status = replica_b.report_refreshed(taker.lease.lease_id, newer)

    # worker-a wakes up and reports to either replica: refused, nothing changes.
    with pytest.raises(LeaseLost):
        replica_a.report_refreshed(paused.lease.lease_id, accounts.refreshed(paused.tokens))
    with pytest.raises(LeaseLost):
        replica_b.report_invalidated(paused.lease.lease_id, "401 seen by worker-a")
    with pytest.raises(LeaseLost):
        replica_a.renew_lease(paused.lease.lease_id, None)
    with pytest.raises(LeaseLost):
        replica_a.release_lease(paused.lease.lease_id, clock.now())

    row = read_row(db_sessionmaker, "u-1")
    assert row.state is SessionState.ACTIVE
    assert row.session_version == status.session_version
    assert row.lease_id == lease_digest(taker.lease.lease_id)
    assert row.last_synced_at is None
    assert stored_tokens(db_sessionmaker, box, "u-1") == newer


def test_paused_holder_cannot_resurrect_an_invalidated_session(
    replicas: tuple[LeaseService, LeaseService],
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    replica_a, replica_b = replicas
    accounts.seed("u-1", LONG)
    paused = replica_a.lease_session("u-1", "worker-a", timedelta(seconds=30))
    clock.advance(31)
    taker = replica_b.lease_session("u-1", "worker-b", None)
    replica_b.report_invalidated(taker.lease.lease_id, "401 on the API")

    with pytest.raises(LeaseLost):
        replica_a.report_refreshed(paused.lease.lease_id, accounts.refreshed(paused.tokens))
    row = read_row(db_sessionmaker, "u-1")
    assert row.state is SessionState.AUTH_EXPIRED
    assert row.session_ciphertext is None
    assert row.invalidated_reason == "401 on the API"


def test_racing_reports_from_old_and_new_holder_keep_the_new_holders_tokens(
    replicas: tuple[LeaseService, LeaseService],
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    accounts.seed("u-1", LONG)
    old = replicas[0].lease_session("u-1", "old", timedelta(seconds=10))
    clock.advance(10)
    new = replicas[1].lease_session("u-1", "new", None)
    # Each holder's garth refreshed the tokens it was handed: 16 distinct token sets.
    theirs = [accounts.refreshed((new if i % 2 else old).tokens) for i in range(16)]

    def report(i: int) -> object:
        lease = new if i % 2 else old
        return replicas[i % 2].report_refreshed(lease.lease.lease_id, theirs[i])

    results = _all_at_once(16, report)
    refused = [i for i, r in enumerate(results) if isinstance(r, LeaseLost)]
    assert refused == list(range(0, 16, 2))
    final = stored_tokens(db_sessionmaker, box, "u-1")
    assert final in theirs[1::2]
    assert read_row(db_sessionmaker, "u-1").session_version == 1 + 8
