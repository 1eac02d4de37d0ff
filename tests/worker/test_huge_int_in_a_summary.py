"""One activity summary carrying an integer longer than Python's int-from-text limit (4300
digits). Before, json.loads refused Garmin's whole page: the worker called that 'Garmin
unavailable', so the user FAILED on every run (none of its activities was ever stored) and
each such user counted as a Garmin outage. Now such a number reads as a float (stored as
null). Found by review (s27)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from garmin_emulator import ACTIVITIES_PATH, GarminEmulator
from tests.fixtures.servers import Replica
from tests.worker import connect, make_config, run_worker, summaries

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_a_huge_number_in_one_summary_does_not_fail_the_user(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "bea")
    start = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
    body = json.dumps(
        [
            {"activityId": 9001, "startTimeGMT": start, "activityName": "Run"},
            {"activityId": 9002, "startTimeGMT": start, "calories": 0},
        ]
    ).replace('"calories": 0', '"calories": ' + "9" * 5000)
    garmin.fail_next(ACTIVITIES_PATH, 200, body=body)
    config = make_config(service.target, garmin, tmp_path, users=("bea",))

    result = run_worker(config)

    assert result.outcome("bea") == "SYNCED", result.users
    assert 9001 in summaries(tmp_path, "bea")
