"""Fixtures of the lease tests. Garmin is the emulator over real HTTP, reached through the
real garth adapter; the database is SQLite or PostgreSQL (`db_sessionmaker`, tests/fixtures)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.services.leases import LeaseService
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings
from garmin_emulator import GarminEmulator
from tests.fixtures.emulators import cleared, scanned_emulator

from . import GarminAccounts, build_service

CONSUMER_KEY = "lease-test-consumer-key"
CONSUMER_SECRET = "lease-test-consumer-secret"


@pytest.fixture
def clock() -> FakeClock:
    # Garmin's tokens carry real expiry times, so the service's clock starts at real time.
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def box(keyring: Keyring) -> SecretBox:
    return SecretBox(keyring)


@pytest.fixture(scope="package")
def running_emulator() -> Iterator[GarminEmulator]:
    with scanned_emulator(consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET) as emu:
        yield emu


@pytest.fixture
def emulator(running_emulator: GarminEmulator) -> Iterator[GarminEmulator]:
    """The package's emulator (stopping one takes ~50 ms: one per test would add seconds),
    cleared for each test; every test logs in its own sessions."""
    with cleared(running_emulator) as emulator:
        yield emulator


@pytest.fixture
def upstream(emulator: GarminEmulator) -> GarthUpstream:
    return GarthUpstream(
        UpstreamSettings(
            consumer_key=CONSUMER_KEY,
            consumer_secret=CONSUMER_SECRET,
            base_url=emulator.url,
            timeout_seconds=5.0,
            # Retries would only repeat GETs of a login; the exchange (a POST) never is.
            retries=0,
        )
    )


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
