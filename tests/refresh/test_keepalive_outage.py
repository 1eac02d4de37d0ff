"""A keep-alive pass during a Garmin outage stops after a few refreshes in a row found Garmin
unavailable; it does not try every due session of its batch in turn.

Before, only a 429 or an open breaker ended a pass: with the token endpoint answering 5xx
(no 429, so no breaker), one pass sent one refresh per due session, at the keep-alive rate,
each failing in turn, and each counting a failed attempt against its session (which then
waits longer and longer). The sync worker stops after --max-garmin-unavailable such users in
a row; keep-alive now stops after OUTAGE_FAILURES_ENDING_A_PASS, leaving the rest to the next
pass. A refresh Garmin answers in between resets the count. Found by review (s27); both
databases, the DI provider over HTTP to the emulator.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from auth_service.services.keepalive import OUTAGE_FAILURES_ENDING_A_PASS
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator

from . import DiAccounts
from .keepalive_bench import KeepAliveBench

pytestmark = pytest.mark.timeout(120)

DUE = 8


def _seed(accounts: DiAccounts) -> None:
    for number in range(DUE):
        # Soonest first: the pass takes them in this order.
        accounts.seed(f"ka-outage-{number}", refresh_in=timedelta(days=1, hours=number))


def test_a_pass_ends_after_a_few_refreshes_find_garmin_down(
    bench: KeepAliveBench, accounts: DiAccounts, emulator: GarminEmulator
) -> None:
    # One at a time, so "in a row" is the order of the batch.
    replica = bench.replica(dataclasses.replace(bench.settings, concurrency=1))
    _seed(accounts)
    before = emulator.request_count(DI_TOKEN_PATH)
    emulator.fail_next(DI_TOKEN_PATH, 503, count=DUE)

    report = replica.keepalive.run_once()

    assert emulator.request_count(DI_TOKEN_PATH) - before == OUTAGE_FAILURES_ENDING_A_PASS
    assert (report.failed, report.deferred) == (
        OUTAGE_FAILURES_ENDING_A_PASS,
        DUE - OUTAGE_FAILURES_ENDING_A_PASS,
    )


def test_an_answer_in_between_resets_the_count(
    bench: KeepAliveBench, accounts: DiAccounts, emulator: GarminEmulator
) -> None:
    replica = bench.replica(dataclasses.replace(bench.settings, concurrency=1))
    _seed(accounts)
    # Two failures, one refresh Garmin answers, two more failures, then Garmin is back:
    # never OUTAGE_FAILURES_ENDING_A_PASS in a row.
    emulator.fail_next(DI_TOKEN_PATH, 503, count=2)
    emulator.fail_next(DI_TOKEN_PATH, None)
    emulator.fail_next(DI_TOKEN_PATH, 503, count=2)

    report = replica.keepalive.run_once()

    assert (report.failed, report.refreshed, report.deferred) == (4, DUE - 4, 0)
