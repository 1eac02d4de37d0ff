"""Sessions Garmin keeps refusing, however many, do not starve a healthy one of keep-alive.

README ("How we treat Garmin's limits"): an account Garmin keeps refusing "does not end every
pass before the sessions behind it"; docs/RELIABILITY.md: sessions that keep failing "do not
starve a dying one". Garmin blocks per account for hours to days (../shared/garmin-di-auth.md).

Before (found by review): keep-alive took sessions whose refresh token dies soonest first and
held one whose refresh failed, or met a 429, back a fixed hour. A blocked account is never
refreshed, so it stayed at the head of the order: its 429 ended a pass, once an hour. With
passes every 5 minutes, 14 such accounts ended every pass (312 passes over 26 h, 312 429s,
the breaker never opened: one 429 per pass), and the healthy session behind them died
unrefreshed. The same with sessions whose refresh fails every time (a refused client id, a key
left out of the ring): more of them than an hour's passes take (12 batches) took every batch
(288 passes over 24 h). Now each counts its failed attempts (keepalive_failures, 0 again
whenever new tokens are stored), keep-alive takes sessions with fewer first, and the wait
doubles with each attempt (policies.keepalive_retry_at).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.models import GarminTokens
from auth_service.domain.policies import keepalive_retry_at
from auth_service.services.keepalive import KeepAliveReport
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator

from . import DiAccounts
from .conftest import SETTINGS
from .keepalive_bench import KeepAliveBench

pytestmark = pytest.mark.timeout(300)

INTERVAL = SETTINGS.keepalive_interval_seconds  # 300 s, the default
HOUR = timedelta(hours=1)


class BlockingGarmin:
    """The emulator, but Garmin answers 429 to every refresh of the blocked accounts (as the
    DI provider raises it for a 429 of diauth's token endpoint)."""

    def __init__(self, real: UpstreamRouter) -> None:
        self._real = real
        self.blocked: set[str] = set()
        self.blocked_calls = 0

    def refresh(self, tokens: GarminTokens) -> GarminTokens:
        if tokens.oauth2.refresh_token in self.blocked:
            self.blocked_calls += 1
            raise GarminRateLimited(
                "Garmin is rate limiting (refresh, HTTP 429)", None, GarminEndpoint.DI_TOKEN
            )
        return self._real.refresh(tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_dozen_blocked_accounts_do_not_starve_a_healthy_session(
    bench: KeepAliveBench, accounts: DiAccounts, upstream: UpstreamRouter
) -> None:
    garmin = BlockingGarmin(upstream)
    replica = bench.replica(upstream=garmin)
    for n in range(14):
        tokens = accounts.seed(f"blocked-{n:02d}", refresh_in=timedelta(days=1))
        garmin.blocked.add(tokens.oauth2.refresh_token)
    accounts.seed("healthy", refresh_in=timedelta(days=1, hours=2))

    passes = bench.passes_until_refreshed(replica, "healthy")

    assert accounts.refreshes("healthy") == 1, (
        f"{passes} keep-alive passes over {passes * INTERVAL / 3600:.0f} h, every one ended "
        f"by a blocked account's 429 ({garmin.blocked_calls} of them); the healthy session "
        "was never refreshed and its refresh token died"
    )
    # Each blocked account ended one pass at most before going behind it (Garmin's 429
    # still ends the pass).
    assert passes <= 15


def test_failing_sessions_a_dozen_batches_deep_do_not_starve_a_healthy_session(
    bench: KeepAliveBench, accounts: DiAccounts
) -> None:
    """The same with sessions whose refresh fails every time (a refused client id, a key left
    out of the ring): held back an hour, they took every pass's batch once there were more of
    them than one hour's passes take (12 x keepalive_batch; here a batch of 2 stands for
    1000, as in test_keepalive_pacing)."""
    batch = 2
    replica = bench.replica(dataclasses.replace(SETTINGS, keepalive_batch=batch))
    # Unknown expiry: first in the order.
    bench.seed_unrefreshable([f"stuck-{n:02d}" for n in range(13 * batch)])
    accounts.seed("healthy", refresh_in=timedelta(days=1))

    passes = bench.passes_until_refreshed(replica, "healthy")

    assert accounts.refreshes("healthy") == 1, (
        f"{passes} keep-alive passes over {passes * INTERVAL / 3600:.0f} h, each batch taken "
        "by sessions that always fail; the healthy session's refresh token died"
    )
    assert passes == 14  # 13 batches of sessions that had not failed yet, then its turn


def test_the_wait_doubles_with_each_failed_attempt_and_new_tokens_start_over(
    bench: KeepAliveBench, accounts: DiAccounts, emulator: GarminEmulator, clock: FakeClock
) -> None:
    replica = bench.replica()
    # Six days left: half of it is more than any wait below.
    accounts.seed("flaky", refresh_in=timedelta(days=6))

    waits = []
    for _ in range(7):
        emulator.fail_next(DI_TOKEN_PATH, 503)
        assert replica.keepalive.run_once() == KeepAliveReport(ran=True, failed=1)
        not_before = bench.not_before("flaky")
        assert not_before is not None
        waits.append(not_before - clock.now())
        clock.advance((not_before - clock.now()).total_seconds())
    assert waits == [HOUR * n for n in (1, 2, 4, 8, 16, 24, 24)]
    assert bench.failures("flaky") == 7

    # A refresh that works clears the count: the next failure waits an hour again.
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, refreshed=1)
    assert bench.failures("flaky") == 0

    # So does a new sign-in or import (new credentials).
    accounts.seed("flaky-2", refresh_in=timedelta(days=6))
    emulator.fail_next(DI_TOKEN_PATH, 503)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, failed=1)
    assert bench.not_before("flaky-2") == clock.now() + HOUR
    assert bench.failures("flaky-2") == 1
    imported = accounts.seed("flaky-2-source", refresh_in=timedelta(days=6))
    bench.install_new_tokens("flaky-2", imported)
    assert bench.failures("flaky-2") == 0


@pytest.mark.parametrize(
    ("failures", "left", "expected"),
    [
        (0, None, HOUR),  # unknown expiry
        (1, None, 2 * HOUR),
        (4, None, 16 * HOUR),
        (5, None, 24 * HOUR),  # a day at most
        (10_000, None, 24 * HOUR),  # no overflow however long it failed
        (3, timedelta(days=6), 8 * HOUR),
        (3, timedelta(hours=10), 5 * HOUR),  # never past half the time left
        (3, timedelta(seconds=90), timedelta(minutes=1)),  # a minute at least
        (3, timedelta(hours=-1), 8 * HOUR),  # already past its stored death
    ],
)
def test_the_rule(failures: int, left: timedelta | None, expected: timedelta) -> None:
    now = datetime(2026, 12, 7, tzinfo=UTC)
    dies_at = None if left is None else now + left
    assert keepalive_retry_at(dies_at, now, HOUR, failures) - now == expected
