"""A sync whose renewal answered LEASE_LOST after its last write no longer puts its items in
place (found by review: the success path committed without looking; a failed sync's items were
already kept only "unless its lease was lost")."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from sync_worker.directory_sink import DirectorySink
from tests.fixtures.servers import Replica
from tests.worker import RecordingSink, connect, make_config, run_worker, summaries
from tests.worker.test_failures import RenewalWatcher

pytestmark = pytest.mark.timeout(60)


def test_items_are_not_put_in_place_once_the_lease_is_known_lost(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """The user disconnects Garmin (DeleteSession) while the worker writes its one page; the
    worker's renewal answers LEASE_LOST before its commit. README: LEASE_LOST from any call,
    the worker stops writing for that user at once; a failed sync keeps what it stored
    'unless its lease was lost'. Nothing of that sync may appear in the user's folder."""
    user = "lia"
    connect(service, garmin, user, activities=3)
    config = make_config(
        service.target,
        garmin,
        tmp_path,
        users=(user,),
        page_size=10,
        lease_ttl=timedelta(seconds=5),
    )
    client = RenewalWatcher(config.auth)
    client.lost = threading.Event()
    sink = RecordingSink(DirectorySink(tmp_path))
    deleted = threading.Event()

    def delete_then_wait_for_the_renewal(_event: object) -> None:
        if not deleted.is_set():
            deleted.set()
            service.call("DeleteSession", pb.DeleteSessionRequest(user_id=user))
            assert client.lost.wait(20), "the renewal never answered LEASE_LOST"
            # The client saw the answer; the keeper notes it as the call returns.
            time.sleep(0.3)

    sink.after_write = delete_then_wait_for_the_renewal
    try:
        result = run_worker(config, client=client, sink=sink)
    finally:
        client.close()

    assert result.outcome(user) == "LEASE_LOST"
    # The worker knew its lease was gone before commit(); yet its items are now in place.
    assert sink.of("commit", user) == [], "commit() ran after the renewal answered LEASE_LOST"
    assert summaries(tmp_path, user) == {}
