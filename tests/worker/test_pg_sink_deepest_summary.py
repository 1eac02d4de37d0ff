"""A summary nested as deep as the worker's own json.loads accepts (Garmin's answer parsed,
so not 'unreadable') must be storable by the PostgreSQL sink. Before, the sink's encoder ran
deeper in the stack than the parser had, raised RecursionError (not the ValueError it falls
back on), and the user was FAILED with an internal error (a traceback) on every run. Found
by review (s27)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from garmin_emulator import ACTIVITIES_PATH, GarminEmulator
from tests.fixtures.servers import Replica
from tests.worker import connect, make_config, run_worker
from tests.worker.conftest import sink_database, sink_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _body(depth: int) -> str:
    start = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
    laps = "[" * depth + "]" * depth
    return f'[{{"activityId": 9001, "startTimeGMT": "{start}", "laps": {laps}}}]'


def _deepest_parsed_run(
    service: Replica, garmin: GarminEmulator, **sink: Any
) -> tuple[int, str, str]:
    """From deep to shallow: the first depth whose list the worker could read."""
    connect(service, garmin, "deep")
    config = make_config(service.target, garmin, users=("deep",), **sink)
    for depth in range(1000, 700, -4):
        garmin.fail_next(ACTIVITIES_PATH, 200, body=_body(depth))
        run = run_worker(config)
        (result,) = run.report.results
        if "unreadable" in result.detail:
            continue
        return depth, result.outcome.value, result.detail
    raise AssertionError("no depth was readable")


def test_the_deepest_readable_summary_is_stored_by_the_postgres_sink(
    service: Replica,
    garmin: GarminEmulator,
    sink_url: str,  # noqa: F811
) -> None:
    depth, outcome, detail = _deepest_parsed_run(service, garmin, out_dir=None, sink_url=sink_url)
    assert outcome == "SYNCED", (depth, detail)
