"""A breaker opened on Garmin's Retry-After stays open that long, on every replica.

A 429 that arrives after the breaker opened, from a call admitted before it opened (another
replica's, or one of the refreshes a replica has in flight), used to replace Garmin's long
wait by its own shorter one (no Retry-After: the 60 s default): `open_breaker` was an
unconditional UPDATE of open_until. A later end now wins, as for the account cooldowns.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import GarminEndpoint, GarminLimitSettings
from auth_service.storage.database import session_factory
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.limits import build_replica

from . import DiAccounts

pytestmark = pytest.mark.timeout(60)

# Any threshold shows it (the default 5 as well); 1 keeps the story short.
LIMITS = GarminLimitSettings(breaker_threshold=1, breaker_window_seconds=60)
GARMIN_ASKED = 3600


def _open_until(db: sessionmaker[Session]):  # type: ignore[no-untyped-def]
    with db() as session:
        [breaker] = SqlGarminLimitRepository(session).breakers((GarminEndpoint.DI_TOKEN,))
    return breaker.open_until


def test_a_later_429_without_retry_after_does_not_shorten_an_open_breaker(
    accounts: DiAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
    second_engine: Engine,
    box: SecretBox,
    upstream: UpstreamRouter,
) -> None:
    first = build_replica(db_sessionmaker, box, upstream, clock, LIMITS)
    second = build_replica(session_factory(second_engine), box, upstream, clock, LIMITS)
    for user in ("in-flight", "asked-an-hour", "later"):
        accounts.seed(user, access_in=timedelta(seconds=-5))  # each grant refreshes

    # The first replica's refresh is with Garmin (answered slowly, a 429 without Retry-After)...
    emulator.fail_next(DI_TOKEN_PATH, 429, count=1, delay=1.0)
    before = emulator.request_count(DI_TOKEN_PATH)
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(first.use_cases.leases.lease_session, "in-flight", "w1", None)
        deadline = time.monotonic() + 10
        while emulator.request_count(DI_TOKEN_PATH) == before:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # ...when the second replica's refresh meets Garmin's 429 asking for an hour: the
        # breaker opens for that hour.
        emulator.fail_next(DI_TOKEN_PATH, 429, count=1, retry_after=GARMIN_ASKED)
        with pytest.raises(GarminRateLimited):
            second.use_cases.leases.lease_session("asked-an-hour", "w2", None)
        opened_until = _open_until(db_sessionmaker)
        assert opened_until >= clock.now() + timedelta(seconds=GARMIN_ASKED - 1)
        with pytest.raises(GarminRateLimited):
            slow.result(timeout=10)

    calls = emulator.request_count(DI_TOKEN_PATH)
    now_until = _open_until(db_sessionmaker)
    # Two minutes on, well inside the hour Garmin asked for, a grant of a third account.
    clock.advance(120)
    try:
        first.use_cases.leases.lease_session("later", "w3", None)
        answered = "granted (Garmin called)"
    except GarminRateLimited as refused:
        answered = f"refused ({refused.held_back})"

    assert emulator.request_count(DI_TOKEN_PATH) == calls, (
        f"Garmin asked for {GARMIN_ASKED} s; the breaker was opened until {opened_until}, "
        f"then moved to {now_until} by the in-flight 429; 120 s later the token endpoint was "
        f"called again: {answered}"
    )
