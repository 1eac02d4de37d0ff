"""Keep-alive refreshes a session once per need, and no session can hold the others back.

What must hold: a session refreshed by anyone is not picked again before half the time its new
refresh token has left, at most half the keep-alive window (policies.keepalive_not_before); a
session whose keep-alive refresh failed, or met Garmin's 429, waits `keepalive_retry_seconds`;
a signing-in or import clears both; and in `keep` mode a kept expiry that has passed when
Garmin accepts the refresh gives way to now + the lifetime.

Before: keep-alive took every ACTIVE DI session whose refresh token dies within the window on
every pass, whatever its last refresh did. With GARMIN_AUTH_DI_REFRESH_EXPIRY_ON_ROTATION=keep,
or a refresh lifetime shorter than the window, one idle session was rotated on every pass (12
times an hour, for days; forever once a kept expiry lay in the past), and `keepalive_batch`
sessions whose refresh always fails took every pass while the others died unused.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.models import GarminTokens
from auth_service.domain.policies import keepalive_not_before
from auth_service.services.keepalive import KeepAliveReport
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.fixtures.di_upstream import di_tokens

from . import DiAccounts
from .conftest import SETTINGS
from .keepalive_bench import KeepAliveBench

pytestmark = pytest.mark.timeout(120)

INTERVAL = SETTINGS.keepalive_interval_seconds
WINDOW = timedelta(seconds=SETTINGS.keepalive_window_seconds)
RETRY = SETTINGS.keepalive_retry_seconds
PASSES_PER_HOUR = 12  # at the default interval (300 s)


def test_keep_mode_rotates_an_idle_session_once_an_hour_not_every_pass(
    bench: KeepAliveBench, accounts: DiAccounts, clock: FakeClock
) -> None:
    # keep: the rotation hands the old expiry on, so no refresh moves it out of the window.
    replica = bench.replica_with_di(rotation_restarts_refresh_expiry=False)
    accounts.seed("pace-keep", refresh_in=timedelta(days=3))
    started = clock.now()

    reports = bench.passes(replica, PASSES_PER_HOUR)

    assert [report.refreshed for report in reports] == [1] + [0] * (PASSES_PER_HOUR - 1)
    assert accounts.refreshes("pace-keep") == 1
    # Half the 3 days left: the kept expiry is approached in halving steps, never missed.
    assert bench.not_before("pace-keep") == started + timedelta(days=1.5)


def test_keep_mode_past_the_kept_expiry_restarts_the_lifetime(
    bench: KeepAliveBench, accounts: DiAccounts, clock: FakeClock
) -> None:
    """Garmin in fact restarts the lifetime: past the kept expiry the session still refreshes
    fine, which disproves `keep` for it; before, the row kept an expiry in the past and every
    pass (and every grant) refreshed it again, indefinitely."""
    replica = bench.replica_with_di(rotation_restarts_refresh_expiry=False)
    accounts.seed("pace-past", refresh_in=timedelta(days=3))
    assert replica.keepalive.run_once().refreshed == 1
    # Four days on our clock: the kept expiry lies a day in the past; at Garmin the session
    # lives on.
    clock.advance(timedelta(days=4).total_seconds())

    reports = bench.passes(replica, 6)

    assert [report.refreshed for report in reports] == [1, 0, 0, 0, 0, 0]
    assert all(report.ended == 0 for report in reports)
    assert bench.refresh_token_dies("pace-past") > clock.now() + timedelta(days=29)


def test_a_lifetime_shorter_than_the_window_is_refreshed_once_per_half_life(
    bench: KeepAliveBench, accounts: DiAccounts, emulator: GarminEmulator, clock: FakeClock
) -> None:
    # Garmin states a refresh lifetime of 5 days, inside the 7-day window after every
    # rotation. (A GARMIN_AUTH_DI_REFRESH_LIFETIME this short, which applies when Garmin states
    # none, is refused at start: tests/refresh/test_keepalive_window_lifetime.py.)
    lifetime = timedelta(days=5)
    emulator.di.answer_overrides = {"refresh_token_expires_in": int(lifetime.total_seconds())}
    replica = bench.replica_with_di()
    accounts.seed("pace-short", refresh_in=None)

    first_hour = bench.passes(replica, PASSES_PER_HOUR)

    assert [report.refreshed for report in first_hour] == [1] + [0] * (PASSES_PER_HOUR - 1)
    # Due again once half the lifetime has passed, and refreshed then.
    clock.advance((lifetime / 2).total_seconds())
    assert replica.keepalive.run_once().refreshed == 1
    assert accounts.refreshes("pace-short") == 2


def test_sessions_that_always_fail_do_not_starve_a_dying_one(
    bench: KeepAliveBench, accounts: DiAccounts, clock: FakeClock
) -> None:
    batch = 2  # stands for the default 1000
    replica = bench.replica(dataclasses.replace(SETTINGS, keepalive_batch=batch))
    # `batch` sessions whose refresh can never succeed, first in keep-alive's order.
    bench.seed_unrefreshable([f"pace-stuck-{index}" for index in range(batch)])
    accounts.seed("pace-dying", refresh_in=timedelta(days=2))

    first = replica.keepalive.run_once()
    assert first == KeepAliveReport(ran=True, failed=batch)
    clock.advance(INTERVAL)
    # The failed ones wait; the dying session gets its turn at the next pass.
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, refreshed=1)
    assert accounts.refreshes("pace-dying") == 1
    # ... and they are tried again once their wait is over, not before.
    clock.advance(RETRY - 2 * INTERVAL)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True)
    clock.advance(2 * INTERVAL)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, failed=batch)


def test_a_failure_and_a_429_wait_keepalive_retry_seconds(
    bench: KeepAliveBench, accounts: DiAccounts, emulator: GarminEmulator, clock: FakeClock
) -> None:
    replica = bench.replica()
    accounts.seed("pace-429", refresh_in=timedelta(days=2))
    # A 429 (Garmin pushing back on the account): the session waits as a failed one does,
    # else it would head the next pass and end it again (test_keepalive_blocked_account).
    emulator.fail_next(DI_TOKEN_PATH, 429, retry_after=60)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, deferred=1)
    clock.advance(INTERVAL)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True)
    clock.advance(RETRY)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, refreshed=1)

    accounts.seed("pace-503", refresh_in=timedelta(days=2))
    # A 503: the session waits keepalive_retry_seconds.
    emulator.fail_next(DI_TOKEN_PATH, 503)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, failed=1)
    clock.advance(INTERVAL)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True)
    clock.advance(RETRY)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, refreshed=1)
    assert accounts.refreshes("pace-503") == 1


def test_a_new_sign_in_clears_the_wait(bench: KeepAliveBench, accounts: DiAccounts) -> None:
    replica = bench.replica_with_di(rotation_restarts_refresh_expiry=False)
    accounts.seed("pace-relogin", refresh_in=timedelta(days=3))
    assert replica.keepalive.run_once().refreshed == 1
    assert bench.not_before("pace-relogin") is not None

    # A login or import stores new credentials: keep-alive takes them whenever they are due.
    imported = accounts.seed("pace-relogin-source", refresh_in=None)
    bench.install_new_tokens("pace-relogin", imported)

    assert bench.not_before("pace-relogin") is None


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        (None, None),  # unknown: due at once
        (timedelta(days=20), WINDOW / 2),  # far: half the window
        (timedelta(days=5), timedelta(days=2.5)),  # inside the window: half the time left
        (timedelta(minutes=8), timedelta(minutes=4)),  # short-lived: still well before death
        (timedelta(days=-1), timedelta(0)),  # already past: due
    ],
)
def test_the_rule(left: timedelta | None, expected: timedelta | None) -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    tokens = _di_tokens(None if left is None else now + left)
    not_before = keepalive_not_before(tokens, now, WINDOW)
    assert (None if not_before is None else not_before - now) == expected


def _di_tokens(refresh_expires_at: datetime | None) -> GarminTokens:
    issued = di_tokens(
        {
            "scope": "s",
            "jti": "j",
            "token_type": "bearer",
            "access_token": "a",
            "refresh_token": "r",
            "expires_in": 3600,
        }
    )
    return dataclasses.replace(
        issued,
        oauth2=dataclasses.replace(issued.oauth2, refresh_token_expires_at=refresh_expires_at),
    )
