"""GARMIN_AUTH_KEEPALIVE_RATE paces the start of keep-alive's refreshes, not their queueing.

README ("How we treat Garmin's limits"): keep-alive "starts at most GARMIN_AUTH_KEEPALIVE_RATE
refreshes per second per replica, spaced with jitter". Before, KeepAlive._refresh_paced handed
a candidate to its thread pool every ~1/rate s whatever the pool was doing: while Garmin was
slow (every worker busy) the candidates queued up in the pool, and once Garmin answered again
the workers started the whole backlog back to back, at Garmin's speed (16-17 refreshes within
0.5 s at 10/s, where at most 11 may start). Now a refresh is handed over only once a worker is
free, and the pace counts from the previous start.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from garmin_emulator import DI_TOKEN_PATH, GarminEmulator

from . import DiAccounts, Replica
from .conftest import SETTINGS

pytestmark = pytest.mark.timeout(120)

SESSIONS = 40
HOLD_SECONDS = 1.5  # Garmin slow for a moment (under the 2 s timeout of the fixture)
WINDOW_SECONDS = 0.5


def test_keepalive_never_starts_more_than_its_rate_after_garmin_was_slow(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
) -> None:
    first, _ = replicas
    rate = SETTINGS.keepalive_rate  # 10/s: a start at most every 0.05 s even with jitter
    for index in range(SESSIONS):
        accounts.seed(f"burst-{index:02d}", refresh_in=timedelta(days=2))
    emulator.fail_next(DI_TOKEN_PATH, None, count=SETTINGS.concurrency, delay=HOLD_SECONDS)

    starts: list[float] = []
    done = threading.Event()

    def watch() -> None:
        seen = emulator.request_count(DI_TOKEN_PATH)
        while not done.is_set():
            now = emulator.request_count(DI_TOKEN_PATH)
            starts.extend([time.monotonic()] * (now - seen))
            seen = now
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        report = first.keepalive.run_once()
    finally:
        done.set()
        watcher.join()

    assert report.refreshed == SESSIONS, report
    # The jitter's shortest spacing is 0.5/rate: no more starts than that allows in a window.
    allowed = int(WINDOW_SECONDS / (0.5 / rate)) + 1
    busiest = max(
        sum(1 for other in starts if start <= other < start + WINDOW_SECONDS) for start in starts
    )
    assert busiest <= allowed, (
        f"{busiest} keep-alive refreshes started within {WINDOW_SECONDS} s (at most {allowed} "
        f"at GARMIN_AUTH_KEEPALIVE_RATE={rate:g}/s) once Garmin answered again after "
        f"{HOLD_SECONDS} s of slowness: the backlog queued meanwhile went out at once"
    )
