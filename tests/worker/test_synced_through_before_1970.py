"""A first sync whose only activity has a startTimeGMT before 1970 (odd input from Garmin: a
device clock never set) reads and stores its whole window. Before, the worker reported that
start time as synced_through; the service refused it (out of range), and the user ended
FAILED (exit 1) on every run although everything was synced (with --all, the refused carried
release also counted toward LeaseNextSession's failures in a row). Now a complete read is
synced through the window's start at least. Found by review (s27)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from garmin_emulator import ACTIVITIES_PATH, GarminEmulator
from tests.fixtures.servers import Replica
from tests.worker import connect, make_config, run_worker, summaries

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("all_users", [False, True])
def test_an_activity_dated_before_1970_does_not_fail_the_user(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, all_users: bool
) -> None:
    connect(service, garmin, "ada")
    page = [{"activityId": 9001, "startTimeGMT": "1969-07-20 20:17:00", "activityName": "x"}]
    garmin.fail_next(ACTIVITIES_PATH, 200, body=json.dumps(page))
    config = make_config(
        service.target,
        garmin,
        tmp_path,
        users=() if all_users else ("ada",),
        all_users=all_users,
    )

    result = run_worker(config)

    assert set(summaries(tmp_path, "ada")) == {9001}  # the whole window was stored
    assert result.outcome("ada") == "SYNCED", result.users
    assert result.exit_code == 0
