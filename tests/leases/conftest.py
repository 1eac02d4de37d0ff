"""Fixtures of the lease tests. Garmin is the emulator over real HTTP, reached through the
real garth adapter; the database is SQLite or PostgreSQL (`db_sessionmaker`, tests/fixtures)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.services.leases import LeaseService
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_emulator import GarminEmulator
from tests.fixtures.emulators import upstream_settings_for
from tests.fixtures.package_emulator import OAuthConsumer, box, clock, emulator, running_emulator

from . import GarminAccounts, build_service

# The shared fixtures this package's tests use (tests/fixtures/package_emulator.py).
__all__ = ["box", "clock", "emulator", "running_emulator"]

CONSUMER_KEY = "lease-test-consumer-key"
CONSUMER_SECRET = "lease-test-consumer-secret"


@pytest.fixture(scope="package")
def emulator_consumer() -> OAuthConsumer:
    return OAuthConsumer(CONSUMER_KEY, CONSUMER_SECRET)


@pytest.fixture
def upstream(emulator: GarminEmulator) -> GarthUpstream:
    # Without retries: they would only repeat GETs of a login; the exchange (a POST) never is.
    return GarthUpstream(upstream_settings_for(emulator, timeout_seconds=5.0))


@pytest.fixture
def accounts(
    emulator: GarminEmulator,
    upstream: GarthUpstream,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> GarminAccounts:
    return GarminAccounts(emulator, upstream, clock, db_sessionmaker, box)


@pytest.fixture
def service(
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    upstream: GarthUpstream,
    clock: FakeClock,
) -> LeaseService:
    return build_service(db_sessionmaker, box, upstream, clock)
