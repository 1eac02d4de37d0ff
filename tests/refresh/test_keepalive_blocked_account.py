"""An account Garmin keeps answering 429, or one waiting out a cooldown, holds nobody back.

Keep-alive orders its candidates soonest expiry first and ends a pass at the first 429 (README,
"How we treat Garmin's limits"). Before, a 429 changed nothing on the session's row, and the
account's cooldown (60 s without Retry-After) was over before the next pass (300 s): an account
Garmin blocks for hours (per account: /work/shared/garmin-di-auth.md) stayed first in the
order, its 429 ended every pass, and the sessions behind it were never refreshed; they died
(36 passes over 3 hours, 'behind' never refreshed). And accounts skipped for a running
cooldown (Garmin not called) each cost a pass a paced start (about 100 s for a batch of 1000
at the default rate), on every pass until the cooldown ended.

Now (README, "Central refresh and keep-alive"; docs/RELIABILITY.md: sessions that keep failing
"do not starve a dying one"): the session Garmin answered 429 waits like a failed one
(keepalive_retry_seconds, or half the time its refresh token has left, a minute at least), and
never before its account's cooldown ends; a session whose account is cooling is passed over
without spending a start and left alone until the cooldown ends.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.models import SessionState
from auth_service.services.keepalive import KeepAliveReport
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row

from . import DiAccounts
from .conftest import SETTINGS
from .keepalive_bench import KeepAliveBench

pytestmark = pytest.mark.timeout(120)

INTERVAL = SETTINGS.keepalive_interval_seconds
# A slower start rate (within its documented range): a pass's 429 is certainly back before
# its next refresh would start, and a paced start is long enough to measure.
SLOW = dataclasses.replace(SETTINGS, keepalive_rate=2.0)


def _due(bench: KeepAliveBench, user_id: str) -> bool:
    not_before = bench.not_before(user_id)
    return not_before is None or not_before <= bench.clock.now()


def test_a_blocked_account_at_the_head_does_not_starve_the_sessions_behind_it(
    bench: KeepAliveBench,
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    replica = bench.replica(SLOW)
    accounts.seed("blocked", refresh_in=timedelta(hours=2))  # soonest: head of the order
    accounts.seed("behind", refresh_in=timedelta(hours=3))
    blocked_dies = bench.refresh_token_dies("blocked")
    behind_dies = bench.refresh_token_dies("behind")

    passes: list[KeepAliveReport] = []
    tried_blocked: list[timedelta] = []
    while clock.now() < behind_dies:
        # Garmin answers every refresh of the blocked account 429 (no Retry-After); the
        # emulator's faults are per request, so one is armed only when keep-alive would take
        # the blocked account first (it is due; a cooldown always ends before it is due).
        blocked_first = _due(bench, "blocked")
        if blocked_first:
            emulator.fail_next(DI_TOKEN_PATH, 429, count=1)
        before = emulator.request_count(DI_TOKEN_PATH)
        passes.append(replica.keepalive.run_once())
        emulator.clear_faults()
        if blocked_first and emulator.request_count(DI_TOKEN_PATH) > before:
            tried_blocked.append(blocked_dies - clock.now())
        clock.advance(INTERVAL)

    refreshed_at = [n for n, report in enumerate(passes) if report.refreshed]
    assert accounts.refreshes("behind") == 1, (
        f"{len(passes)} keep-alive passes over 3 hours; every one ended at the blocked "
        f"account's 429 and 'behind' (a healthy account) was never refreshed before its "
        f"refresh token died: {sorted({dataclasses.astuple(report) for report in passes})}"
    )
    assert refreshed_at == [1]  # the very next pass, not after the blocked one's death
    # The blocked account is still tried while it lives (after an hour, then half its
    # remaining life), not left to die, and its session is not ended by the 429s.
    while_alive = [left for left in tried_blocked if left > timedelta(0)]
    assert while_alive[:3] == [timedelta(hours=2), timedelta(hours=1), timedelta(minutes=30)]
    assert read_row(db_sessionmaker, "blocked").state is SessionState.ACTIVE


def test_a_429_holds_the_session_back_until_its_cooldown_ends_at_least(
    bench: KeepAliveBench, accounts: DiAccounts, emulator: GarminEmulator, clock: FakeClock
) -> None:
    replica = bench.replica(SLOW)
    # Its refresh token has 30 min left: half of it (15 min) is less than Garmin's wait.
    accounts.seed("long-wait", refresh_in=timedelta(minutes=30))
    emulator.fail_next(DI_TOKEN_PATH, 429, retry_after=1200)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, deferred=1)
    assert bench.not_before("long-wait") == clock.now() + timedelta(seconds=1200)
    clock.advance(1199)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True)
    clock.advance(1)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, refreshed=1)


def test_cooling_accounts_at_the_head_cost_a_pass_no_time(
    bench: KeepAliveBench, accounts: DiAccounts, emulator: GarminEmulator, clock: FakeClock
) -> None:
    replica = bench.replica(SLOW)
    cooling = [f"cooling-{n:02d}" for n in range(20)]
    cooldown = timedelta(minutes=30)
    for user_id in cooling:
        accounts.seed(user_id, refresh_in=timedelta(days=1))  # sooner: head of the order
        # A worker met Garmin's 429 at the Connect API and said so when it released the
        # user: the account's cooldown holds back every call of it, a refresh too.
        held = replica.leases.lease_session(user_id, "worker", None)
        replica.leases.release_lease(held.lease.lease_id, None, cooldown)
    accounts.seed("behind", refresh_in=timedelta(days=2))

    started = time.monotonic()
    report = replica.keepalive.run_once()
    took = time.monotonic() - started

    assert report == KeepAliveReport(ran=True, refreshed=1, deferred=len(cooling))
    assert emulator.request_count(DI_TOKEN_PATH) == 1  # 'behind' only
    # 20 paced starts at 2/s would take 5 s at least (the jitter's shortest spacing).
    assert took < 2.5, f"a pass over {len(cooling)} cooling accounts took {took:.1f} s"
    # Held back until the cooldown ends: the next passes do not pick them again...
    clock.advance(INTERVAL)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True)
    # ... and once it has ended, they are refreshed.
    clock.advance(cooldown.total_seconds() - INTERVAL)
    assert replica.keepalive.run_once().refreshed == len(cooling)
