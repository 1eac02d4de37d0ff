"""The garth provider counts on the service's clock (the database's, every replica's expiry
and cooldown decisions'), not on this machine's: the lifetimes of the tokens Garmin issues and
a Retry-After given as an HTTP date. Before, garth's own expiries (this machine's time.time()
plus Garmin's "expires in") were stored, and a Retry-After date was measured on this machine's
clock: a replica whose clock ran 2 h ahead stored expiries 2 h late (every replica then handed
out dead tokens, unrefreshed, for 2 h), and one 5 minutes ahead shortened Garmin's wait by 5
minutes for every replica."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.models import LoginSucceeded
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings
from garmin_emulator import EXCHANGE_PATH, EmulatedUser, GarminEmulator

from .conftest import PASSWORD

# The service's clock, 2 h behind this machine's (as seen from a replica 2 h ahead).
BEHIND = timedelta(hours=2)


def _service_clock() -> FakeClock:
    return FakeClock(datetime.now(UTC) - BEHIND)


def test_issued_tokens_expire_on_the_services_clock(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser
) -> None:
    clock = _service_clock()
    upstream = GarthUpstream(settings, clock=clock)

    signed_in = upstream.login(user.email, PASSWORD)
    assert isinstance(signed_in, LoginSucceeded)
    refreshed = upstream.refresh(signed_in.tokens)

    for tokens in (signed_in.tokens, refreshed):
        lifetime = tokens.oauth2.expires_at - clock.now()
        expected = timedelta(seconds=emulator.access_token_expires_in)
        assert abs(lifetime - expected) < timedelta(seconds=10), lifetime
        assert tokens.oauth2.refresh_token_expires_at is not None
        refresh_lifetime = tokens.oauth2.refresh_token_expires_at - clock.now()
        expected = timedelta(seconds=emulator.refresh_token_expires_in)
        assert abs(refresh_lifetime - expected) < timedelta(seconds=10), refresh_lifetime


def test_a_retry_after_date_is_measured_on_the_services_clock(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser
) -> None:
    clock = _service_clock()
    upstream = GarthUpstream(settings, clock=clock)
    signed_in = upstream.login(user.email, PASSWORD)
    assert isinstance(signed_in, LoginSucceeded)
    # Garmin: "not before 10 minutes from now" (its own time, which is the service's).
    not_before = clock.now() + timedelta(minutes=10)
    emulator.fail_next(EXCHANGE_PATH, 429, retry_after=format_datetime(not_before, usegmt=True))

    with pytest.raises(GarminRateLimited) as limited:
        upstream.refresh(signed_in.tokens)

    assert limited.value.retry_after_seconds == pytest.approx(600, abs=5)
