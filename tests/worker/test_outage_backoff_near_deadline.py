"""A Garmin 5xx on one thread near --max-runtime: the user in flight on another thread waits
out the outage backoff and finishes (--max-runtime stops taking new users). Before, the
backoff shared the 429 pause's give-up rule, so that user, whose every request Garmin had
served, ended RATE_LIMITED mid-window ("Garmin's rate-limit pause outlasts the run") although
Garmin never answered 429 to anyone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from garmin_emulator import ACTIVITIES_PATH, GarminEmulator
from sync_worker.control import RunControl
from sync_worker.directory_sink import DirectorySink
from tests.fixtures.servers import Replica
from tests.worker import RecordingSink, SinkEvent, connect, make_config, run_worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_outage_backoff_past_the_deadline_does_not_make_an_in_flight_user_rate_limited(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "amy", activities=3)
    connect(service, garmin, "ben", activities=3)
    # --max-runtime 2s; the first outage pause is 3 s (the default 5 s, scaled down).
    control = RunControl(2.0, unavailable_backoff=3.0)
    sink = RecordingSink(DirectorySink(tmp_path))
    amy_wrote = threading.Event()

    def after_write(event: SinkEvent) -> None:
        if event.user_id == "ben" and not amy_wrote.is_set():
            # ben goes on only once amy is under way (so ben's next page meets the outage).
            assert amy_wrote.wait(20)
        elif event.user_id == "amy" and not amy_wrote.is_set():
            # Garmin starts answering 503 (only ben will ask it again before the pause) ...
            garmin.fail_next(ACTIVITIES_PATH, 503, count=100)
            amy_wrote.set()
            # ... and amy goes on once ben has failed of it and the run pauses Garmin calls.
            for _ in range(200):
                if control.pause_remaining() > 0:
                    break
                time.sleep(0.05)
            assert control.pause_remaining() > 0
            garmin.clear_faults()

    sink.after_write = after_write
    config = make_config(
        service.target, garmin, tmp_path, users=("amy", "ben"), concurrency=2, page_size=1
    )

    result = run_worker(config, control=control, sink=sink)

    assert result.outcome("ben") == "FAILED"  # Garmin's 503s, as documented
    # Garmin answered every one of amy's requests with 200 and nobody ever got a 429: amy was
    # in flight when --max-runtime passed, so it finishes after the outage pause.
    assert result.outcome("amy") == "SYNCED", (
        f"amy ended {result.outcome('amy')} with {result.users['amy']['items']} item(s)"
    )
