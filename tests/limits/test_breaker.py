"""The breaker per Garmin endpoint, shared by two replicas: enough 429s across accounts open
it, no call then reaches the endpoint (keep-alive included), one probe goes through when the
wait has passed, and its answer closes the breaker (or opens it again). Meanwhile a lease
whose stored access token still works is granted with it."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import BreakerPhase, GarminEndpoint, GarminLimitSettings
from auth_service.domain.models import SessionState
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from garmin_emulator import DI_TOKEN_PATH, EXCHANGE_PATH, GarminEmulator
from tests.leases import GarminAccounts, read_row
from tests.refresh import DiAccounts

from . import at_once
from .conftest import MakeReplicas

pytestmark = pytest.mark.timeout(120)

LIMITS = GarminLimitSettings(breaker_threshold=3, breaker_window_seconds=60)
RETRY_AFTER = 10


def _phase(db: sessionmaker[Session], clock: FakeClock) -> BreakerPhase:
    with db() as session:
        breakers = SqlGarminLimitRepository(session).breakers((GarminEndpoint.DI_TOKEN,))
    return breakers[0].phase(clock.now()) if breakers else BreakerPhase.CLOSED


def test_breaker_opens_probes_once_and_closes(
    make_replicas: MakeReplicas,
    di_accounts: DiAccounts,
    garth_accounts: GarminAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    first, second = make_replicas(LIMITS)
    users = [f"user-{n}" for n in range(8)]
    garth_accounts.seed("garth-user", timedelta(seconds=-5))  # resets the emulator's records
    for user in users:
        # Due for keep-alive too: the refresh token dies within its window.
        di_accounts.seed(user, access_in=timedelta(seconds=-5), refresh_in=timedelta(days=1))
    emulator.fail_next(DI_TOKEN_PATH, 429, count=1000, retry_after=RETRY_AFTER)

    # Three accounts meet a 429, on either replica: the third opens the breaker.
    for n, user in enumerate(users[:3]):
        replica = (first, second)[n % 2]
        with pytest.raises(GarminRateLimited):
            replica.use_cases.leases.lease_session(user, "worker", None)
    assert emulator.request_count(DI_TOKEN_PATH) == 3
    assert _phase(db_sessionmaker, clock) is BreakerPhase.OPEN

    # Open: no account reaches the endpoint, from either replica, keep-alive included.
    with pytest.raises(GarminRateLimited) as refused:
        second.use_cases.leases.lease_session(users[3], "worker", None)
    assert refused.value.held_back == "breaker_open"
    assert refused.value.retry_after_seconds == pytest.approx(RETRY_AFTER, abs=0.01)
    report = first.use_cases.keepalive.run_once()
    assert report.refreshed == 0
    assert report.deferred >= 1
    assert emulator.request_count(DI_TOKEN_PATH) == 3
    # Other endpoints are not affected: a garth session still refreshes.
    garth = first.use_cases.leases.lease_session("garth-user", "worker", None)
    assert garth.tokens.oauth2.expires_at > clock.now()
    assert emulator.request_count(EXCHANGE_PATH) == 1

    # Half-open: of four askers at once on both replicas, exactly one probes. Garmin still
    # answers 429, so the breaker opens again.
    clock.advance(RETRY_AFTER)
    askers = zip(users[3:7], (first, second, first, second), strict=True)
    answers = at_once(
        [
            partial(replica.use_cases.leases.lease_session, user, "worker", None)
            for user, replica in askers
        ]
    )
    assert emulator.request_count(DI_TOKEN_PATH) == 4
    assert all(isinstance(answer, GarminRateLimited) for answer in answers), answers
    assert _phase(db_sessionmaker, clock) is BreakerPhase.OPEN

    # Garmin answers again: the next probe closes the breaker and calls resume at once.
    clock.advance(RETRY_AFTER)
    emulator.clear_faults()
    probe = second.use_cases.leases.lease_session(users[7], "worker", None)
    assert probe.tokens.oauth2.expires_at > clock.now()
    assert _phase(db_sessionmaker, clock) is BreakerPhase.CLOSED
    for user in users[3:7]:  # never rate-limited themselves: no cooldown of their own
        first.use_cases.leases.lease_session(user, "worker", None)
    assert emulator.request_count(DI_TOKEN_PATH) == 9
    # No session was ended by any of it.
    assert {read_row(db_sessionmaker, user).state for user in users} == {SessionState.ACTIVE}
    assert all(di_accounts.reuses(user) == 0 for user in users)


def test_a_lease_with_a_still_valid_token_is_granted_during_a_cooldown(
    make_replicas: MakeReplicas,
    di_accounts: DiAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
) -> None:
    first, second = make_replicas(LIMITS)
    # Valid for two minutes: a five-minute lease wants it refreshed first.
    old = di_accounts.seed("ulla", access_in=timedelta(minutes=2))
    emulator.fail_next(DI_TOKEN_PATH, 429, count=1000, retry_after=600)
    grant = first.use_cases.leases.lease_session("ulla", "worker", None)
    assert grant.tokens == old  # Garmin said 429: the token in hand is handed out
    first.use_cases.leases.release_lease(grant.lease.lease_id, None)
    calls = emulator.request_count(DI_TOKEN_PATH)

    # During the cooldown: granted with the stored token, Garmin not asked.
    clock.advance(30)
    again = second.use_cases.leases.lease_session("ulla", "worker", None)
    assert again.tokens == old
    assert emulator.request_count(DI_TOKEN_PATH) == calls == 1
    second.use_cases.leases.release_lease(again.lease.lease_id, None)

    # Once the token has expired, a grant has nothing to hand out: refused with the wait.
    clock.advance(120)
    with pytest.raises(GarminRateLimited) as refused:
        first.use_cases.leases.lease_session("ulla", "worker", None)
    assert refused.value.retry_after_seconds == pytest.approx(600 - 150, abs=0.01)
    assert emulator.request_count(DI_TOKEN_PATH) == 1
