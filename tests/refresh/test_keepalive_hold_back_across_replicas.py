"""Keep-alive's hold-back after a failure holds for another replica whose pass overlaps.

Passes overlap across replicas when a pass outlasts the interval (1000 sessions at 10/s, or
far longer while Garmin times out: exactly when back-off matters); Store.exclusive only
covers choosing the batch. Before (found by review s25): keep-alive's claim never read
keepalive_not_before, so replica B, whose batch was chosen before replica A's refresh of the
session failed, refreshed it anyway, calling Garmin again at once (2 calls where 1 was due);
and a failure's hold-back was computed from the failed-attempt count read when the batch was
chosen, so B's failure wrote a 1 h hold-back again where the count it left (2) calls for 2 h.
Now the claim honours the hold-back as the row has it, and the statement counting a failure
picks the hold-back for the count the row holds as it writes.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.repositories import KeepAliveCandidate
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row

from . import DiAccounts, Replica
from .conftest import SETTINGS
from .keepalive_bench import KeepAliveBench

pytestmark = pytest.mark.timeout(120)

RETRY = timedelta(seconds=SETTINGS.keepalive_retry_seconds)  # an hour


def _chosen(db: sessionmaker[Session], user_id: str) -> KeepAliveCandidate:
    """What a pass's keepalive_candidates read of the session when it chose its batch."""
    row = read_row(db, user_id)
    return KeepAliveCandidate(row.user_id, row.session_version, row.refresh_token_expires_at, 0)


def test_a_failed_session_is_not_retried_at_once_by_an_overlapping_pass(
    accounts: DiAccounts,
    emulator: GarminEmulator,
    replicas: tuple[Replica, Replica],
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
    bench: KeepAliveBench,
) -> None:
    a, b = replicas
    accounts.seed("flaky", refresh_in=timedelta(days=1))  # inside the window: due
    chosen_by_b = _chosen(db_sessionmaker, "flaky")

    emulator.fail_next(DI_TOKEN_PATH, 503, count=2)
    before = emulator.request_count(DI_TOKEN_PATH)
    # A's pass (its batch chosen after B's) reaches the session first: 503, held back.
    assert a.keepalive._refresh_paced([chosen_by_b])["failed"] == 1
    assert bench.failures("flaky") == 1
    assert bench.not_before("flaky") == clock.now() + RETRY

    # B's pass, overlapping, reaches the same session a moment later: left alone.
    assert b.keepalive._refresh_paced([chosen_by_b])["skipped"] == 1

    assert emulator.request_count(DI_TOKEN_PATH) - before == 1, (
        "the session keep-alive just held back for an hour was sent to Garmin again at once "
        "by the other replica's overlapping pass"
    )
    assert bench.failures("flaky") == 1
    assert bench.not_before("flaky") == clock.now() + RETRY


def test_a_failure_holds_back_by_the_count_the_row_has_when_written(
    accounts: DiAccounts,
    emulator: GarminEmulator,
    replicas: tuple[Replica, Replica],
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
    bench: KeepAliveBench,
) -> None:
    """B's pass is still going when A's hold-back ends (Garmin timing out for an hour), and
    B's own attempt fails too: the second failed attempt waits twice as long."""
    a, b = replicas
    accounts.seed("flaky", refresh_in=timedelta(days=1))  # half its life: more than 2 h
    chosen_by_b = _chosen(db_sessionmaker, "flaky")

    emulator.fail_next(DI_TOKEN_PATH, 503, count=2)
    assert a.keepalive._refresh_paced([chosen_by_b])["failed"] == 1
    clock.advance(RETRY.total_seconds())

    assert b.keepalive._refresh_paced([chosen_by_b])["failed"] == 1

    assert bench.failures("flaky") == 2
    assert bench.not_before("flaky") == clock.now() + 2 * RETRY, (
        "the second failed attempt was held back as if it were the first (the count B read "
        "when its batch was chosen)"
    )
