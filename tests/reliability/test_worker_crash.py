"""Workers that die or stall while holding a lease (the real `garmin-sync-worker` console
script, in its own process).

tests/worker/test_cli.py already shows that a SIGKILLed worker's user is synced cleanly by a
rerun once the lease expired, and tests/leases/test_lease_concurrency.py that a paused holder
is refused after a takeover (service level, fake clock). This extends both to real processes
and real time: a worker SIGKILLed mid-sync and another SIGSTOPped mid-sync (a paused process:
GC, a frozen VM) for longer than its ttl. Each time the next worker takes over only after the
ttl, with a larger fencing token; the paused one, resumed, ends LEASE_LOST without writing or
reporting anything; and every late call made with either old lease answers LEASE_LOST and
changes nothing, while the sink's fence refuses their tokens.
"""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DOWNLOAD_PREFIX, GarminEmulator
from sync_worker.directory_sink import DirectorySink
from sync_worker.sinks import FencingRefused
from tests.fixtures.servers import Replica, expect_failure
from tests.worker import WORKER_SCRIPT, connect, status, summaries, worker_env

from . import audit_events, record_figures, stored_row, wait_until

pytestmark = pytest.mark.timeout(120)

USER = "kim"
TTL = "5s"


@pytest.fixture
def backend() -> str:
    return "sqlite"


def worker_args(out: Path, holder: str) -> list[str]:
    return [
        WORKER_SCRIPT,
        "run",
        "--user",
        USER,
        "--out",
        str(out),
        "--with-files",
        "--holder",
        holder,
    ]


def start_worker(env: dict[str, str], out: Path, holder: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*worker_args(out, holder), "--lease-ttl", TTL],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def holding(service: Replica, holder: str) -> pb.Lease | None:
    lease = status(service, USER).lease
    return lease if lease.holder == holder else None


def written(out: Path) -> int:
    """Items written (original files, each as downloaded, and summaries, a page at a time),
    in place or still in their temporary files (the directory sink puts a sync's items in
    place at its commit)."""
    folder = out / USER / "activities"
    names = {path.name.removeprefix(".").removesuffix(".tmp") for path in folder.glob("*")}
    return sum(name.endswith((".json", ".zip")) for name in names)


def wait_for_lease_and_a_write(
    service: Replica, database_url: str, out: Path, holder: str, writes: int
) -> pb.Lease:
    """The worker's lease once it wrote. GetStatus shows who holds a lease but never its id
    (the holder's key), so the id is read from the table, as a stalled worker still has it."""
    wait_until(lambda: written(out) >= writes, 30, f"{holder}'s write")
    lease = holding(service, holder)
    assert lease is not None
    row = stored_row(database_url, USER)
    assert row is not None
    assert row.lease_id is not None
    assert row.fencing_token == lease.fencing_token
    lease.lease_id = row.lease_id
    return lease


def late_calls(lease_id: str) -> list[tuple[str, Any]]:
    """Every call a worker makes with its lease, as a stalled holder would make them late."""
    synced = timestamp_pb2.Timestamp()
    synced.FromDatetime(datetime.now(UTC))
    return [
        ("RenewLease", pb.RenewLeaseRequest(lease_id=lease_id)),
        ("RefreshLease", pb.RefreshLeaseRequest(lease_id=lease_id, session_version=1)),
        ("ReportInvalidated", pb.ReportInvalidatedRequest(lease_id=lease_id, reason="401 late")),
        ("ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease_id, synced_through=synced)),
    ]


def assert_late_calls_refused(service: Replica, database_url: str, leases: list[pb.Lease]) -> int:
    """Every call a holder makes, made late with each of `leases`: all LEASE_LOST, and the
    user's row and audit trail show no effect. Returns how many calls were refused."""
    before = stored_row(database_url, USER)
    assert before is not None
    refused = 0
    for lease in leases:
        for rpc, request in late_calls(lease.lease_id):
            failure = expect_failure(partial(service.call, rpc, request, role="worker"))
            assert (failure.code, failure.reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "LEASE_LOST",
            ), rpc
            refused += 1
    after = stored_row(database_url, USER)
    assert after is not None
    for column in (
        "state",
        "session_ciphertext",
        "session_version",
        "fencing_token",
        "lease_id",
        "synced_through",
        "last_synced_at",
    ):
        assert getattr(after, column) == getattr(before, column), column
    # The old leases never changed anything after their takeover: their only successful
    # events are the grant and renewals.
    for lease in leases:
        kinds = {
            e.rpc
            for e in audit_events(database_url)
            if e.lease_id == lease.lease_id and e.outcome_code == "OK"
        }
        assert kinds <= {"LeaseSession", "RenewLease"}, kinds
    return refused


def test_killed_and_paused_workers_are_taken_over_and_their_late_calls_refused(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, database_url: str
) -> None:
    connect(service, garmin, USER, activities=6)
    out = tmp_path / "out"
    env = worker_env(service.target, garmin)
    # Each download takes a moment, so a worker is surely mid-sync when it is stopped.
    garmin.fail_next(DOWNLOAD_PREFIX, None, count=1000, delay=0.4)

    # 1. A worker is SIGKILLed while it holds the lease.
    killed = start_worker(env, out, "killed")
    try:
        dead = wait_for_lease_and_a_write(service, database_url, out, "killed", writes=1)
    finally:
        killed.kill()
        killed.communicate(timeout=10)
    # Its lease stands until the ttl runs out ...
    held = expect_failure(
        lambda: service.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id=USER, holder="eager"), role="worker"
        )
    )
    assert (held.code, held.reason) == (grpc.StatusCode.ABORTED, "LEASE_HELD")
    assert "'killed'" in held.message

    # 2. ... then the next worker takes over, and is SIGSTOPped (paused) mid-sync past its ttl.
    wait_until(lambda: holding(service, "killed") is None, 15, "the killed lease to expire")
    paused = start_worker(env, out, "paused")
    try:
        wait_until(lambda: holding(service, "paused") is not None, 30, "the takeover")
        stalled = wait_for_lease_and_a_write(
            service, database_url, out, "paused", writes=written(out) + 1
        )
        paused.send_signal(signal.SIGSTOP)
        assert stalled.fencing_token == dead.fencing_token + 1

        # 3. A third worker takes over once the paused one's lease expired, and syncs it all.
        garmin.clear_faults()
        wait_until(lambda: holding(service, "paused") is None, 15, "the paused lease to expire")
        fresh = subprocess.run(
            worker_args(out, "fresh"),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert fresh.returncode == 0, fresh.stderr
        assert json.loads(fresh.stdout.splitlines()[0])["outcome"] == "SYNCED"
        after_fresh = stored_row(database_url, USER)
        assert after_fresh is not None
        assert after_fresh.fencing_token == stalled.fencing_token + 1
        assert after_fresh.synced_through is not None
    finally:
        # 4. The paused worker wakes up: it notices, writes nothing more and reports nothing.
        paused.send_signal(signal.SIGCONT)
        woke_out, woke_err = paused.communicate(timeout=30)
    assert paused.returncode == 0, woke_err
    assert json.loads(woke_out.splitlines()[0])["outcome"] == "LEASE_LOST"
    assert len(summaries(out, USER)) == 6

    # 5. Late calls made with either old lease are refused and change nothing.
    refused = assert_late_calls_refused(service, database_url, [dead, stalled])
    # The sink's fence refuses both old tokens.
    for lease in (dead, stalled):
        with pytest.raises(FencingRefused):
            DirectorySink(out).for_user(USER, lease.fencing_token)
    record_figures(
        "test_worker_crash", workers_killed=1, workers_paused=1, late_calls_refused=refused
    )
