"""Fixtures of the refresh tests: one package-wide emulator (reset per test), the test DI
upstream over real HTTP, and two replicas on the test's database (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock, SystemClock
from auth_service.domain.policies import RefreshSettings
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.emulators import upstream_settings_for
from tests.fixtures.package_emulator import OAuthConsumer, box, clock, emulator, running_emulator
from tests.reliability.cluster import PrivateCluster, migrated_cluster

from . import DiAccounts, Replica, build_replica
from .keepalive_bench import KeepAliveBench
from .partition import Partition, partitionable

# The shared fixtures this package's tests use (tests/fixtures/package_emulator.py).
__all__ = ["box", "clock", "emulator", "running_emulator"]

CONSUMER_KEY = "refresh-test-consumer-key"
CONSUMER_SECRET = "refresh-test-consumer-secret"
# Short enough that a held request times out quickly; a claim outlives it.
TIMEOUT_SECONDS = 2.0
SETTINGS = RefreshSettings(concurrency=4, claim_seconds=10.0, wait_seconds=15.0)


@pytest.fixture(scope="package")
def emulator_consumer() -> OAuthConsumer:
    return OAuthConsumer(CONSUMER_KEY, CONSUMER_SECRET)


@pytest.fixture
def upstream(emulator: GarminEmulator) -> UpstreamRouter:
    return both_providers(upstream_settings_for(emulator, timeout_seconds=TIMEOUT_SECONDS))


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
    upstream: UpstreamRouter,
    clock: FakeClock,
) -> tuple[Replica, Replica]:
    return (
        build_replica(db_sessionmaker, box, upstream, clock, SETTINGS),
        build_replica(session_factory(second_engine), box, upstream, clock, SETTINGS),
    )


@pytest.fixture
def accounts(
    emulator: GarminEmulator,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> DiAccounts:
    return DiAccounts(emulator, clock, db_sessionmaker, box)


@pytest.fixture
def bench(accounts: DiAccounts, upstream: UpstreamRouter, clock: FakeClock) -> KeepAliveBench:
    """What the keep-alive tests build their replicas and passes on."""
    settings = upstream_settings_for(accounts.emulator, timeout_seconds=TIMEOUT_SECONDS)
    return KeepAliveBench(accounts, upstream, settings, clock, SETTINGS)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster (migrated) the test may stop, touching no other test."""
    with migrated_cluster() as running:
        yield running


@pytest.fixture
def partition(
    cluster: PrivateCluster, box: SecretBox, upstream: UpstreamRouter, clock: FakeClock
) -> Iterator[Partition]:
    with partitionable(cluster, box, upstream, clock) as partition:
        yield partition


@pytest.fixture
def di_accounts(
    garmin: GarminEmulator, db_sessionmaker: sessionmaker[Session], keyring: Keyring
) -> DiAccounts:
    """DI sessions for gRPC tests: issued by the `garmin` emulator of the servers fixture and
    stored at real time (the replicas' clock)."""
    return DiAccounts(garmin, SystemClock(), db_sessionmaker, SecretBox(keyring))
