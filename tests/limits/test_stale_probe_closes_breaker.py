"""A half-open breaker's probe that outlives GARMIN_AUTH_BREAKER_PROBE_TIMEOUT (a Garmin call
may take UPSTREAM_TIMEOUT x (UPSTREAM_RETRIES + 1), which nothing keeps below it) lets
another call probe; when that second probe meets Garmin's 429 the breaker opens again for
Garmin's Retry-After. Before, the first probe's late success then closed the breaker anyway
(close_breaker was unconditional, not named by the probe's claim as release_call is): every
replica called the endpoint again at once, inside the wait Garmin had just asked for. Now the
probe's settle is named by its claim (probe_until). Found by review (s27)."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import BreakerPhase, GarminEndpoint, GarminLimitSettings
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.limits.conftest import MakeReplicas
from tests.refresh import DiAccounts

pytestmark = pytest.mark.timeout(60)

PROBE = 30.0
LIMITS = GarminLimitSettings(breaker_threshold=1, breaker_window_seconds=60, probe_seconds=PROBE)


def _phase(db: sessionmaker[Session], clock: FakeClock) -> BreakerPhase:
    with db() as session:
        breakers = SqlGarminLimitRepository(session).breakers((GarminEndpoint.DI_TOKEN,))
    return breakers[0].phase(clock.now()) if breakers else BreakerPhase.CLOSED


def test_a_late_probe_answer_does_not_close_a_breaker_a_newer_429_reopened(
    make_replicas: MakeReplicas,
    di_accounts: DiAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    first, second = make_replicas(LIMITS)
    users = [f"user-{n}" for n in range(4)]
    for user in users:
        di_accounts.seed(user, access_in=timedelta(seconds=-5))

    # A 429 opens the breaker (threshold 1) for 10 s.
    emulator.fail_next(DI_TOKEN_PATH, 429, retry_after=10)
    with pytest.raises(GarminRateLimited):
        first.use_cases.leases.lease_session(users[0], "worker", None)
    assert _phase(db_sessionmaker, clock) is BreakerPhase.OPEN
    clock.advance(11)  # half-open

    # The probe (user-1, first replica): Garmin is slow to answer it.
    emulator.fail_next(DI_TOKEN_PATH, None, delay=1.5)
    emulator.fail_next(DI_TOKEN_PATH, 429, retry_after=600)
    before = emulator.request_count(DI_TOKEN_PATH)
    outcome: list[object] = []
    probe = threading.Thread(
        target=lambda: outcome.append(first.use_cases.leases.lease_session(users[1], "w", None))
    )
    probe.start()
    deadline = time.monotonic() + 5
    while emulator.request_count(DI_TOKEN_PATH) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emulator.request_count(DI_TOKEN_PATH) == before + 1

    # Its probe claim runs out while it is with Garmin: the second replica probes, and
    # Garmin answers 429 with a 600 s Retry-After: the breaker is open again.
    clock.advance(PROBE + 1)
    with pytest.raises(GarminRateLimited) as second_probe:
        second.use_cases.leases.lease_session(users[2], "worker", None)
    assert second_probe.value.held_back is None  # Garmin's own 429
    assert _phase(db_sessionmaker, clock) is BreakerPhase.OPEN

    probe.join(10)
    assert outcome, "the slow probe did not finish"
    # Garmin asked for 600 s a moment ago: the breaker must still be open.
    phase = _phase(db_sessionmaker, clock)
    calls = emulator.request_count(DI_TOKEN_PATH)
    with contextlib.suppress(GarminRateLimited):
        second.use_cases.leases.lease_session(users[3], "worker", None)
    reached = emulator.request_count(DI_TOKEN_PATH) - calls
    assert (phase, reached) == (BreakerPhase.OPEN, 0), (
        f"the stale probe's late answer left the breaker {phase.value}; "
        f"{reached} call reached the endpoint inside Garmin's 600 s Retry-After"
    )
