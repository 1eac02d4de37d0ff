"""A Connect API 429 whose Retry-After reads as zero (``0``, or an HTTP date that is already
past when it arrives: one-second resolution, or a worker clock a little ahead of Garmin's)
pauses the worker's run for the default pause (60 s), as the service holds the account back
for GARMIN_AUTH_RATE_LIMIT_DEFAULT_WAIT on the same header, and that pause is what the release
reports.

Before, RunControl.slow_down took max(0, retry_after) = 0: the next user's Connect API call
followed at once, and every user of the run met Garmin's 429 in turn. Found by a read-only
review.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from garmin_emulator import ACTIVITIES_PATH, GarminEmulator
from sync_worker.control import RunControl
from tests.fixtures.servers import Replica
from tests.worker import connect, make_config, run_worker

pytestmark = pytest.mark.timeout(90)


def _past_date() -> str:
    return format_datetime(datetime.now(UTC) - timedelta(seconds=2), usegmt=True)


@pytest.mark.parametrize("retry_after", ["0", "past-date"])
def test_a_429_with_a_zero_retry_after_pauses_the_run(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, retry_after: str
) -> None:
    connect(service, garmin, "amy", activities=1)
    connect(service, garmin, "ben", activities=1)
    header = _past_date() if retry_after == "past-date" else retry_after
    garmin.fail_next(ACTIVITIES_PATH, 429, retry_after=header)
    control = RunControl()
    config = make_config(service.target, garmin, tmp_path, users=("amy", "ben"), concurrency=1)
    runner = threading.Thread(target=run_worker, args=(config,), kwargs={"control": control})
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while garmin.request_count(ACTIVITIES_PATH) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        hit_at = time.monotonic()
        # Garmin's 429 was answered; give the run 3 s.
        while garmin.request_count(ACTIVITIES_PATH) < 2 and time.monotonic() < hit_at + 3:
            time.sleep(0.02)
        calls = garmin.request_count(ACTIVITIES_PATH)
        after = time.monotonic() - hit_at
        assert calls == 1, (
            f"Retry-After {header!r}: the run called the Connect API again {after:.2f} s after "
            f"Garmin's 429 (pause {control.pause_remaining():.1f} s; the service would hold "
            "the account back for its default wait, 60 s)"
        )
    finally:
        control.request_stop()
        runner.join(30)
