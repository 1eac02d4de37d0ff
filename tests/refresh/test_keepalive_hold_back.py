"""Keep-alive's hold-back after a failed refresh does not outlast the session.

KeepAlive._hold_back left a session whose refresh failed without Garmin pushing back (a 503,
a timeout) alone for keepalive_retry_seconds (an hour), whatever time its refresh token had
left. A session that reached keep-alive with less than that left (tokens imported with a
short remaining life, keep-alive not running for a while, a short stated lifetime) was, after
one passing 503, not tried again before its refresh token died: Garmin then answers
invalid_grant and the session ends. It now waits half the time left at most (a minute at
least: domain.policies.keepalive_retry_at).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row

from . import DiAccounts, Replica
from .conftest import SETTINGS

pytestmark = pytest.mark.timeout(60)


def test_one_503_does_not_keep_a_dying_session_from_keepalive_until_it_is_dead(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    first, second = replicas
    accounts.seed("dying", refresh_in=timedelta(minutes=30))
    dies_at = read_row(db_sessionmaker, "dying").refresh_token_expires_at
    assert dies_at is not None

    emulator.fail_next(DI_TOKEN_PATH, 503, count=1)  # Garmin busy for a moment
    assert first.keepalive.run_once().failed == 1
    failed_at = clock.now()

    # Garmin is fine again; keep-alive passes every interval on both replicas until the
    # refresh token's stored death.
    passes = []
    while clock.now() + timedelta(seconds=SETTINGS.keepalive_interval_seconds) < dies_at:
        clock.advance(SETTINGS.keepalive_interval_seconds)
        passes.append(first.keepalive.run_once())
        passes.append(second.keepalive.run_once())

    assert accounts.refreshes("dying") == 1, (
        f"{len(passes)} keep-alive passes over the refresh token's last "
        f"{dies_at - failed_at} of life after one 503; none tried again (held back "
        f"{SETTINGS.keepalive_retry_seconds:.0f} s): "
        f"{[p.refreshed + p.failed for p in passes]}"
    )


def test_a_session_that_keeps_failing_is_still_held_back_a_minute_at_least(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
) -> None:
    first, _ = replicas
    accounts.seed("last-minutes", refresh_in=timedelta(seconds=90))
    emulator.fail_next(DI_TOKEN_PATH, 503, count=2)
    assert first.keepalive.run_once().failed == 1
    clock.advance(30)  # half of 90 s is 45 s, more than the minute's floor would allow
    assert first.keepalive.run_once().failed == 0  # held back: Garmin not asked
    clock.advance(31)
    assert first.keepalive.run_once().failed == 1
