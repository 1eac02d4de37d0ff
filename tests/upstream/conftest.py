"""Fixtures for the upstream tests: a real emulator over HTTP and the real adapter (garth is
never mocked)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from auth_service.domain.models import GarminTokens, LoginSucceeded
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings
from garmin_emulator import EmulatedUser, GarminEmulator
from tests.fixtures.emulators import scanned_emulator
from tests.fixtures.http_servers import RecordingServer

CONSUMER_KEY = "test-consumer-key"
CONSUMER_SECRET = "test-consumer-secret"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def emulator() -> Iterator[GarminEmulator]:
    with scanned_emulator(consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET) as emu:
        yield emu


def make_settings(emulator: GarminEmulator, **overrides: object) -> UpstreamSettings:
    values: dict[str, object] = {
        "consumer_key": CONSUMER_KEY,
        "consumer_secret": CONSUMER_SECRET,
        "base_url": emulator.url,
        "timeout_seconds": 2.0,
        "retries": 2,
    }
    values.update(overrides)
    return UpstreamSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(emulator: GarminEmulator) -> UpstreamSettings:
    return make_settings(emulator)


@pytest.fixture
def upstream(settings: UpstreamSettings) -> GarthUpstream:
    return GarthUpstream(settings)


@pytest.fixture
def user(emulator: GarminEmulator) -> EmulatedUser:
    return emulator.add_user("runner@example.com", PASSWORD)


@pytest.fixture
def other_user(emulator: GarminEmulator) -> EmulatedUser:
    return emulator.add_user("cyclist@example.com", "another password")


@pytest.fixture
def mfa_user(emulator: GarminEmulator) -> EmulatedUser:
    return emulator.add_user("careful@example.com", PASSWORD, mfa=True, mfa_code="246810")


def login_tokens(upstream: GarthUpstream, user: EmulatedUser) -> GarminTokens:
    result = upstream.login(user.email, user.password)
    assert isinstance(result, LoginSucceeded)
    return result.tokens


@pytest.fixture
def tokens(upstream: GarthUpstream, user: EmulatedUser) -> GarminTokens:
    return login_tokens(upstream, user)


def locally_expired(tokens: GarminTokens) -> GarminTokens:
    """The same session with an access token our side considers expired."""
    past = datetime.now(UTC) - timedelta(minutes=5)
    return dataclasses.replace(tokens, oauth2=dataclasses.replace(tokens.oauth2, expires_at=past))


def expired_everywhere(emulator: GarminEmulator, tokens: GarminTokens, email: str) -> GarminTokens:
    """Expired on both sides: Garmin refuses the old access token too."""
    emulator.expire_access_tokens(email)
    return locally_expired(tokens)


@pytest.fixture
def elsewhere() -> Iterator[RecordingServer]:
    """Where a redirect points: a real HTTP server that records what reaches it."""
    server = RecordingServer((200, {"Content-Type": "application/json"}, b""))
    yield server
    server.close()
