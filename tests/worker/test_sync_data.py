"""Every activity ends up in the sink, whatever Garmin's list and files look like: an
activity without an original file or a usable id, an activity deleted while the worker is
between pages, and a summary a sink cannot store as it is (odd text, NaN, deep nesting).
Each test failed before its fix."""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import ACTIVITIES_PATH, GarminEmulator
from sync_worker.directory_sink import DirectorySink
from tests.fixtures.servers import Replica
from tests.worker import (
    RecordingSink,
    SinkEvent,
    activity_files,
    connect,
    make_config,
    run_worker,
    status,
    summaries,
    utc,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def backend() -> str:
    return "sqlite"


# --- an activity entered by hand has no original file ---------------------------------------


def test_an_activity_without_an_original_file_is_stored_without_one(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """Before: the download's 404 was 'Garmin unavailable': the user FAILED on every run,
    none of the page's summaries was stored and synced_through never moved."""
    email = connect(service, garmin, "mia")
    created = garmin.add_activities(email, 3)
    manual = created[1]["activityId"]
    garmin.remove_activity_file(manual)
    config = make_config(service.target, garmin, tmp_path, users=("mia",), with_files=True)

    outcomes = [run_worker(config).outcome("mia") for _ in range(2)]

    assert outcomes == ["SYNCED", "NOTHING_NEW"]
    after = status(service, "mia")
    assert after.synced_through.ToDatetime(tzinfo=UTC) == utc(created[-1]["startTimeGMT"])
    files = activity_files(tmp_path, "mia")
    assert {f"{a['activityId']}.json" for a in created} <= set(files)
    assert f"{manual}.zip" not in files
    assert {f"{a['activityId']}.zip" for a in (created[0], created[2])} <= set(files)


def test_users_with_an_activity_without_a_file_are_not_a_garmin_outage(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """Before: each such user counted as Garmin being down; after three the run gave up
    (exit 4) and the fourth user was never synced."""
    users = ("u1", "u2", "u3", "u4")
    for user in users:
        email = connect(service, garmin, user)
        garmin.remove_activity_file(garmin.add_activities(email, 2)[0]["activityId"])
    config = make_config(
        service.target, garmin, tmp_path, users=users, with_files=True, concurrency=1
    )

    result = run_worker(config)

    assert result.exit_code == 0, (result.exit_code, result.users)
    assert [result.outcome(user) for user in users] == ["SYNCED"] * 4
    assert status(service, "u4").state == pb.SESSION_STATE_ACTIVE


# --- an activity without a usable id --------------------------------------------------------


def test_an_unusable_activity_id_in_garmins_list_skips_only_that_activity(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An id str.isdigit() accepts and int() refuses ('²'). Before: ValueError, an internal
    error with a traceback, FAILED on every run (synced_through never moved past it)."""
    connect(service, garmin, "uma")
    start = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
    page = [
        {"activityId": 9001, "startTimeGMT": start, "activityName": "Run"},
        {"activityId": "²", "startTimeGMT": start, "activityName": "odd"},
    ]
    garmin.fail_next(ACTIVITIES_PATH, 200, body=json.dumps(page))
    config = make_config(service.target, garmin, tmp_path, users=("uma",))

    with caplog.at_level(logging.WARNING):
        result = run_worker(config)

    assert result.outcome("uma") == "SYNCED", result.users["uma"]
    assert result.exit_code == 0
    assert not [record for record in caplog.records if record.exc_info]
    assert set(summaries(tmp_path, "uma")) == {9001}


# --- the list changes between two pages -----------------------------------------------------


def test_an_activity_deleted_between_pages_hides_no_other_one(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """The list is paged by offset, newest first. Before: deleting an activity already read
    moved every later one up a place, the one that slid over the page boundary was never
    read, synced_through moved past it, and no later run read it again."""
    email = connect(service, garmin, "pia")
    created = garmin.add_activities(
        email,
        5,
        first_start=datetime.now(UTC) - timedelta(hours=1) - timedelta(days=12),
        every=timedelta(days=3),
    )
    newest = created[-1]["activityId"]
    config = make_config(service.target, garmin, tmp_path, users=("pia",), page_size=2)
    sink = RecordingSink(DirectorySink(tmp_path))
    deleted: list[int] = []

    def deleted_in_garmin_connect_after_page_one(event: SinkEvent) -> None:
        if not deleted and event.activity_id == created[-2]["activityId"]:
            garmin.delete_activity(email, newest)
            deleted.append(newest)

    sink.after_write = deleted_in_garmin_connect_after_page_one

    assert run_worker(config, sink=sink).outcome("pia") == "SYNCED"

    assert deleted == [newest]
    still_listed = {a["activityId"] for a in created} - {newest}
    assert still_listed <= set(summaries(tmp_path, "pia"))


# --- summaries a sink cannot store as they are ----------------------------------------------

# A name cut inside an emoji: a lone UTF-16 surrogate, which JSON's "\ud83c" escape allows
# and UTF-8 does not; NUL, which PostgreSQL's jsonb refuses.
ODD_NAMES = {"surrogate": "Morning Run \ud83c", "nul": "Run\x00"}


def _sync_twice(
    service: Replica, garmin: GarminEmulator, fields: dict[str, Any], **sink: Any
) -> list[str]:
    """Sync "odd" twice: two usual activities and one with `fields` in its summary."""
    email = connect(service, garmin, "odd")
    garmin.add_activities(email, 2)
    garmin.add_activities(email, [fields])
    config = make_config(service.target, garmin, users=("odd",), **sink)
    return [run_worker(config).outcome("odd") for _ in range(2)]


def test_a_name_cut_inside_an_emoji_is_stored_by_the_directory_sink(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """Before: UnicodeEncodeError, an internal error, FAILED on every run."""
    outcomes = _sync_twice(
        service, garmin, {"activityName": ODD_NAMES["surrogate"]}, out_dir=tmp_path
    )

    assert outcomes == ["SYNCED", "NOTHING_NEW"]
    assert status(service, "odd").HasField("synced_through")
    names = [summary["activityName"] for summary in summaries(tmp_path, "odd").values()]
    assert "Morning Run \ufffd" in names


def test_a_deeply_nested_summary_is_stored_by_the_directory_sink(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Laps nested 400 deep, which json.loads accepts. Before: RecursionError in the
    summary's encoder, an internal error with a traceback, FAILED on every run."""
    laps: list[Any] = []
    for _ in range(400):
        laps = [laps]

    with caplog.at_level(logging.WARNING):
        outcomes = _sync_twice(service, garmin, {"laps": laps}, out_dir=tmp_path)

    assert outcomes == ["SYNCED", "NOTHING_NEW"]
    assert not [record for record in caplog.records if record.exc_info]
    stored = [summary.get("laps") for summary in summaries(tmp_path, "odd").values()]
    assert laps in stored


@pytest.mark.parametrize("name", ODD_NAMES.values(), ids=ODD_NAMES.keys())
def test_an_odd_name_is_stored_by_the_postgres_sink(
    service: Replica, garmin: GarminEmulator, sink_url: str, name: str
) -> None:
    """Before: jsonb refused the page, FAILED on every run (its other activities lost too)."""
    outcomes = _sync_twice(service, garmin, {"activityName": name}, out_dir=None, sink_url=sink_url)

    assert outcomes == ["SYNCED", "NOTHING_NEW"]
    assert status(service, "odd").HasField("synced_through")


def test_nan_and_infinities_are_stored_as_null_by_the_postgres_sink(
    service: Replica, garmin: GarminEmulator, sink_url: str
) -> None:
    """Garmin's JSON may carry the bare NaN and Infinity that json.loads accepts. Before:
    jsonb refused the page, FAILED on every run (its other activities lost too)."""
    fields = {"averageHR": math.nan, "maxSpeed": math.inf, "minElevation": -math.inf}

    outcomes = _sync_twice(service, garmin, fields, out_dir=None, sink_url=sink_url)

    assert outcomes == ["SYNCED", "NOTHING_NEW"]
    assert status(service, "odd").HasField("synced_through")
    with psycopg.connect(sink_url) as connection:
        stored = connection.execute(
            "SELECT summary FROM garmin_activity WHERE summary ? 'minElevation'"
        ).fetchall()
    assert [{key: row[0][key] for key in fields} for row in stored] == [dict.fromkeys(fields)]
