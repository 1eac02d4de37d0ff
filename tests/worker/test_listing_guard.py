"""The listing's runaway guard counts activities, not pages, and hitting it is the user's
failure, not a Garmin outage.

Before: the guard was MAX_PAGES = 1,000 pages ("1,000 pages of 100 is plenty", sync.py), but
--page-size may be 1-1000 (README, worker flags): at page size 1 a user with 1,001
activities in the window was FAILED on every run ("Garmin's activity list did not end"),
never got synced_through, and counted as Garmin being unavailable (three such users in a
row ended the run with exit 4, "Garmin is down"). README (The sync worker, step 2): a window
of more than 100,000 activities is not read to its end; that user ends FAILED, which Garmin's
being unavailable is not counted for.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from garmin_emulator import GarminEmulator
from sync_worker import sync
from tests.fixtures.servers import Replica
from tests.worker import connect, make_config, run_worker, status

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_more_than_a_thousand_pages_at_page_size_one_are_read(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    email = connect(service, garmin, "many")
    # 1,001 activities in the default 30-day backfill, one every 20 minutes: 1,001 pages.
    garmin.add_activities(
        email,
        1001,
        first_start=datetime.now(UTC) - timedelta(days=20),
        every=timedelta(minutes=20),
    )
    config = make_config(service.target, garmin, tmp_path, users=("many",), page_size=1)

    result = run_worker(config)

    assert result.outcome("many") == "SYNCED", (
        f"outcome {result.outcome('many')}, items {result.users['many']['items']}, "
        f"exit {result.exit_code}: {result.stderr.strip().splitlines()[-1:]}"
    )
    assert result.users["many"]["items"] == 1001
    assert status(service, "many").HasField("synced_through")


def test_a_list_past_the_guard_fails_the_user_and_is_no_garmin_outage(
    service: Replica,
    garmin: GarminEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four such users in a row, one at a time: each FAILED, and the run goes on to the end
    (exit 1), where three Garmin outages in a row stop it (exit 4)."""
    monkeypatch.setattr(sync, "MAX_LISTED_ACTIVITIES", 5)
    users = ("long-a", "long-b", "long-c", "long-d")
    for user in users:
        connect(service, garmin, user, activities=8, every=timedelta(hours=1))
    config = make_config(service.target, garmin, tmp_path, users=users, page_size=2, concurrency=1)

    result = run_worker(config)

    assert {user: result.outcome(user) for user in users} == dict.fromkeys(users, "FAILED")
    assert result.exit_code == 1
    assert result.report.garmin_outage is None
    assert "Garmin is unavailable" not in caplog.text
    assert [done.detail for done in result.report.results] == [
        "Garmin's activity list did not end within 5 activities"
    ] * len(users)
    for user in users:
        # What was read is kept; synced_through does not move past the unread rest.
        assert not status(service, user).HasField("synced_through")
        assert len(list((tmp_path / user / "activities").glob("*.json"))) >= 5
