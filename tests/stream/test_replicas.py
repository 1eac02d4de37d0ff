"""Several replicas: two write while a watcher follows a third (in process, both backends),
and a watcher resumes on another replica after its replica was SIGKILLed mid-stream (real
processes)."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict

from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.reliability import StartReplica as StartProcess
from tests.reliability import audit_events
from tests.stream import Follower, connect, disconnect, positions, watch
from tests.stream.conftest import StartReplica

ROUNDS = 12


def _churn(stub: pb_grpc.GarminAuthServiceStub, prefix: str, failures: list[BaseException]) -> None:
    try:
        for number in range(ROUNDS):
            user = f"{prefix}-{number % 3}"
            connect(stub, user)
            disconnect(stub, user)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        failures.append(exc)


def test_two_replicas_write_while_a_third_is_followed(start_replica: StartReplica) -> None:
    writers = [start_replica(), start_replica()]
    watched = start_replica()
    follower = Follower(watch(watched.stub)).start()
    start = int(follower.wait_heartbeat().cursor)
    failures: list[BaseException] = []
    threads = [
        threading.Thread(target=_churn, args=(replica.stub, f"r{index}", failures))
        for index, replica in enumerate(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    total = 2 * ROUNDS * 2
    events = follower.wait_changes(total)
    follower.cancel()
    # Every change once, in position order, none missing.
    assert positions(events) == list(range(start + 1, start + total + 1))
    # Each user's changes in the order they were made (the audit trail's, per user).
    per_user: dict[str, list[str]] = defaultdict(list)
    for audited in audit_events(watched.running.application.settings.database_url):
        assert audited.user_id is not None
        per_user[audited.user_id].append(audited.rpc)
    streamed: dict[str, list[str]] = defaultdict(list)
    for event in events:
        streamed[event.status.user_id].append(event.rpc)
    assert streamed == per_user


def test_resume_on_another_replica_after_sigkill(
    database_url: str, replica_processes: StartProcess
) -> None:
    """A replica dies mid-stream while changes keep coming: the consumer resumes on another
    replica from the last cursor it read and gets every change once."""
    doomed, survivor = replica_processes(database_url), replica_processes(database_url)
    total = 30
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for number in range(total):
                connect(survivor.stub, f"user-{number}")
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    follower = Follower(watch(doomed.stub, after_cursor="0")).start()
    writer = threading.Thread(target=write)
    writer.start()
    follower.wait_changes(5)
    doomed.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    doomed.process.wait(timeout=10)  # type: ignore[union-attr]
    follower.wait_end(timeout=30)
    before_kill = list(follower.changes)
    assert len(before_kill) < total  # the kill came mid-stream
    resumed = Follower(watch(survivor.stub, after_cursor=before_kill[-1].cursor)).start()
    writer.join(timeout=60)
    assert not failures
    rest = resumed.wait_changes(total - len(before_kill))
    resumed.cancel()
    got = before_kill + rest
    assert positions(got) == list(range(1, total + 1))
    assert [e.status.user_id for e in got] == [f"user-{n}" for n in range(total)]
