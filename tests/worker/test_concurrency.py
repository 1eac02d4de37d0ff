"""Concurrency: no user's token rides on another user's request, and two workers draining
the queue at once never sync the same user at the same time."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from garmin_emulator import ACTIVITIES_PATH, DOWNLOAD_PREFIX, GarminEmulator
from sync_worker.directory_sink import DirectorySink
from tests.fixtures.servers import Replica

from . import (
    RecordingSink,
    SinkEvent,
    WorkerRun,
    activity_files,
    connect,
    email_of,
    make_config,
    run_worker,
    summaries,
)

pytestmark = pytest.mark.timeout(60)


def test_no_users_token_rides_on_another_users_request(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    users = [f"leak-{index}" for index in range(6)]
    for user in users:
        connect(service, garmin, user, activities=4)
    owners: dict[int, str] = {}  # activity id -> owner's email, from what was stored
    garmin.reset_records()
    # Interleave everyone's requests: small pages, files, a little latency.
    garmin.latency_seconds = 0.01

    result = run_worker(
        make_config(
            service.target,
            garmin,
            tmp_path,
            users=tuple(users),
            concurrency=6,
            page_size=1,
            with_files=True,
        )
    )

    assert result.summary["summary"]["SYNCED"] == 6
    calls = garmin.api_calls
    assert len(calls) == 6 * (5 + 4)  # 5 one-item pages and 4 downloads per user
    assert all(call.status == 200 and call.token_owner is not None for call in calls)
    for user in users:
        stored = summaries(tmp_path, user)
        assert len(stored) == 4
        # A page fetched with someone else's token would list their activities.
        assert {summary["ownerDisplayName"] for summary in stored.values()} == {user}
        owners.update(dict.fromkeys(stored, email_of(user)))
        assert len(activity_files(tmp_path, user)) == 8
    for call in calls:
        if call.path.startswith(DOWNLOAD_PREFIX):
            activity_id = int(call.path.removeprefix(DOWNLOAD_PREFIX))
            assert call.token_owner == owners[activity_id]
    # Each user's token appears on exactly that user's requests: 9 each.
    by_token: dict[str, set[str]] = {}
    for call in calls:
        assert call.authorization is not None
        by_token.setdefault(call.authorization, set()).add(str(call.token_owner))
    assert all(len(owner) == 1 for owner in by_token.values())
    assert sum(1 for call in calls if call.path == ACTIVITIES_PATH) == 30


def test_two_workers_draining_at_once_never_sync_a_user_at_the_same_time(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    users = [f"pair-{index:02d}" for index in range(12)]
    for user in users:
        connect(service, garmin, user, activities=3)
    garmin.latency_seconds = 0.02
    sink = RecordingSink(DirectorySink(tmp_path))
    start = threading.Barrier(2)
    runs: dict[str, WorkerRun] = {}

    def worker(holder: str) -> None:
        # min_sync_interval 0: a user the other worker just released is due again, so only
        # the leases keep the two apart.
        config = make_config(
            service.target,
            garmin,
            tmp_path,
            all_users=True,
            concurrency=3,
            holder=holder,
            min_sync_interval=timedelta(0),
        )
        start.wait()
        runs[holder] = run_worker(config, sink=sink)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("w1", "w2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert {run.exit_code for run in runs.values()} == {0}
    for run in runs.values():
        # Never the same user twice in one run.
        assert len(run.users) == len([line for line in run.lines if "user_id" in line])
    assert set(runs["w1"].users) | set(runs["w2"].users) == set(users)
    # Per user, the sink's claim..close windows never overlap.
    for user in users:
        windows = pairs(sink.of("claim", user), sink.of("close", user))
        windows.sort()
        for (_, end), (begin, _) in itertools.pairwise(windows):
            assert end <= begin, f"{user} was synced by two workers at once"
        # Each grant carried a higher fencing token than the one before.
        tokens = [event.fencing_token for event in sink.of("claim", user)]
        assert tokens == sorted(set(tokens))
    for user in users:
        assert len(summaries(tmp_path, user)) == 3


def pairs(claims: list[SinkEvent], closes: list[SinkEvent]) -> list[tuple[float, float]]:
    ends = {event.fencing_token: event.at for event in closes}
    return [(event.at, ends[event.fencing_token]) for event in claims]
