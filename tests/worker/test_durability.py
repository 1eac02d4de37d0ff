"""The directory sink's durability costs two flushes per user, not one per item: the sink's
commit, before the worker releases the lease (which moves synced_through past them), flushes
every item's data at once (syncfs), renames them into place and fsyncs the directory once.
Counted by the sink itself (DirectorySink.fsyncs), not by patching os."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from garmin_emulator import GarminEmulator
from sync_worker.directory_sink import _SYNCFS, DirectorySink
from sync_worker.lease_grants import SessionStatus
from tests.fixtures.servers import Replica
from tests.worker.recording_client import RecordingClient

from . import RecordingSink, connect, email_of, make_config, run_worker

pytestmark = pytest.mark.timeout(60)

USERS = ("ann", "bob", "cat")
ACTIVITIES = 8
NEW_ACTIVITIES = 5
# A user's first sync also makes its folder's entry in the root durable, and the folder's
# own entries (activities/, the fence file): three directories, once per user.
FIRST_SYNC_DIRECTORIES = 3


class CommitsAtRelease(RecordingClient):
    """Notes, at every ReleaseLease, how many user sinks had committed."""

    def __init__(self, sink: RecordingSink, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sink = sink
        self.calls = []
        self.commits_at_release: list[int] = []

    def release_lease(
        self,
        lease_id: str,
        synced_through: datetime | None,
        garmin_retry_after: float | None = None,
    ) -> SessionStatus:
        self.commits_at_release.append(len(self.sink.of("commit")))
        return super().release_lease(lease_id, synced_through, garmin_retry_after)


def flushes(directory: DirectorySink) -> tuple[int, int]:
    """(syncfs calls, item fsyncs)."""
    return directory.fsyncs.filesystems, directory.fsyncs.items


def stored_items(out: Path) -> list[Path]:
    return sorted(out.glob("*/activities/*"))


def test_a_crash_free_run_leaves_every_item_durable_with_one_directory_fsync_per_user(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    for user in USERS:
        connect(service, garmin, user, activities=ACTIVITIES)
    directory = DirectorySink(tmp_path)
    sink = RecordingSink(directory)
    config = make_config(service.target, garmin, tmp_path, users=USERS, concurrency=1)

    first_client = CommitsAtRelease(sink, config.auth)
    first = run_worker(config, client=first_client, sink=sink)

    assert [first.outcome(user) for user in USERS] == ["SYNCED"] * len(USERS)
    items = stored_items(tmp_path)
    assert len(items) == len(USERS) * ACTIVITIES
    assert not any(path.name.endswith(".tmp") for path in items)
    # The items' data flushed once per user (or each item once where syncfs cannot be
    # trusted); the directories once per user, not per item.
    assert flushes(directory) == ((len(USERS), 0) if _SYNCFS else (0, len(items)))
    assert directory.fsyncs.directories == FIRST_SYNC_DIRECTORIES * len(USERS)
    # Every user's items were durable before its lease was released.
    assert first_client.commits_at_release == [1, 2, 3]

    for user in USERS:
        # Inside the next read window (synced_through minus the overlap).
        garmin.add_activities(email_of(user), NEW_ACTIVITIES, every=timedelta(minutes=5))
    second_client = CommitsAtRelease(sink, config.auth)
    second = run_worker(config, client=second_client, sink=sink)

    assert [second.users[user]["items"] for user in USERS] == [NEW_ACTIVITIES] * len(USERS)
    assert len(stored_items(tmp_path)) == len(USERS) * (ACTIVITIES + NEW_ACTIVITIES)
    all_items = len(USERS) * (ACTIVITIES + NEW_ACTIVITIES)
    assert flushes(directory) == ((2 * len(USERS), 0) if _SYNCFS else (0, all_items))
    # A later sync of a user costs one directory fsync, whatever the number of items.
    assert directory.fsyncs.directories == (FIRST_SYNC_DIRECTORIES + 1) * len(USERS)
    assert second_client.commits_at_release == [4, 5, 6]
