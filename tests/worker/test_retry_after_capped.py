"""The worker caps Garmin's Retry-After at --rate-limit-max-wait (default 1h), as the service
caps the same header at GARMIN_AUTH_RATE_LIMIT_MAX_WAIT ("a garbled header must not park an
account for a year", auth_service/domain/garmin_limits.py).

Before: the worker took the header as it came: a year, an HTTP-date in 9999 or 1e15 parked
every thread of a run without --max-runtime (the documented default) for that long. Now the
pause, and the wait its release reports to the service, are at most the cap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from garmin_emulator import ACTIVITIES_PATH, GarminEmulator
from sync_worker.control import RunControl
from tests.fixtures.servers import Replica
from tests.worker import connect, make_config, run_worker

pytestmark = pytest.mark.timeout(90)

SERVICE_MAX_WAIT = 3600.0


@pytest.mark.parametrize(
    "retry_after",
    ["31536000", "Fri, 31 Dec 9999 23:59:59 GMT", "1e15"],
    ids=["year", "date", "exp"],
)
def test_a_garbled_retry_after_does_not_park_the_run(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, retry_after: str
) -> None:
    connect(service, garmin, "amy", activities=1)
    connect(service, garmin, "ben", activities=1)
    garmin.fail_next(ACTIVITIES_PATH, 429, retry_after=retry_after)
    control = RunControl()  # no --max-runtime: the default
    config = make_config(service.target, garmin, tmp_path, users=("amy", "ben"), concurrency=1)
    runner = threading.Thread(target=run_worker, args=(config,), kwargs={"control": control})
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while control.pause_remaining() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        pause = control.pause_remaining()
        assert 0 < pause <= SERVICE_MAX_WAIT, f"ben waits {pause:.0f} s for amy's 429"
    finally:
        control.request_stop()
        runner.join(30)


def test_the_cap_is_the_configured_one() -> None:
    control = RunControl(max_rate_limit_pause=90.0)

    assert control.slow_down(1e15) == 90.0
    assert control.slow_down(30.0) == 30.0
    assert 0 < control.pause_remaining() <= 90.0
