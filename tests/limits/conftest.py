"""Fixtures of the rate-limit tests: one package-wide emulator (reset per test), the
service's real providers over HTTP, and a factory of two replicas on the test's database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import Clock, FakeClock
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.policies import RefreshSettings
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.provider import GarthUpstream
from auth_service.upstream.router import UpstreamRouter
from garmin_client.settings import UpstreamSettings
from garmin_emulator import GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.emulators import upstream_settings_for
from tests.fixtures.package_emulator import OAuthConsumer, box, clock, emulator, running_emulator
from tests.leases import GarminAccounts
from tests.refresh import DiAccounts

from . import REFRESH, Replica, build_replica

# The shared fixtures this package's tests use (tests/fixtures/package_emulator.py).
__all__ = ["box", "clock", "emulator", "running_emulator"]

CONSUMER_KEY = "limits-test-consumer-key"
CONSUMER_SECRET = "limits-test-consumer-secret"

ReplicaPair = tuple[Replica, Replica]
MakeReplicas = Callable[..., ReplicaPair]


@pytest.fixture(scope="package")
def emulator_consumer() -> OAuthConsumer:
    return OAuthConsumer(CONSUMER_KEY, CONSUMER_SECRET)


@pytest.fixture
def upstream_settings(emulator: GarminEmulator) -> UpstreamSettings:
    return upstream_settings_for(emulator, timeout_seconds=2.0)


@pytest.fixture
def upstream(upstream_settings: UpstreamSettings) -> UpstreamRouter:
    return both_providers(upstream_settings)


@pytest.fixture
def make_replicas(
    database_url: str,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    upstream: UpstreamRouter,
    clock: FakeClock,
) -> Iterator[MakeReplicas]:
    """Two replicas (the second with its own engine) with the given limits and clock."""
    engines: list[Engine] = []

    def make(
        limits: GarminLimitSettings, *, on: Clock | None = None, refresh: RefreshSettings = REFRESH
    ) -> ReplicaPair:
        engine = create_engine_for(database_url)
        engines.append(engine)
        time = on or clock
        return (
            build_replica(db_sessionmaker, box, upstream, time, limits, refresh=refresh),
            build_replica(session_factory(engine), box, upstream, time, limits, refresh=refresh),
        )

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def di_accounts(
    emulator: GarminEmulator,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> DiAccounts:
    return DiAccounts(emulator, clock, db_sessionmaker, box)


@pytest.fixture
def garth_accounts(
    emulator: GarminEmulator,
    upstream_settings: UpstreamSettings,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> GarminAccounts:
    return GarminAccounts(emulator, GarthUpstream(upstream_settings), clock, db_sessionmaker, box)
