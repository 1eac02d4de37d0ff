"""What Garmin and the auth service can do to a run: 429, 5xx, slow and hanging answers, the
service down at start and mid-run, refused credentials, and leases lost mid-run.

These exercise the worker, not the storage: they run on SQLite only (the PostgreSQL sink's
fencing has its own variant here)."""

from __future__ import annotations

import dataclasses
import errno
import io
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from auth_service.domain.policies import LeaseSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import ACTIVITIES_PATH, DOWNLOAD_PREFIX, GarminEmulator
from sync_worker.client import AuthClient
from sync_worker.client_errors import AuthServiceError
from sync_worker.control import RunControl
from sync_worker.directory_sink import DirectorySink
from sync_worker.postgres_sink import PostgresSink
from sync_worker.runner import EXIT_GARMIN_UNAVAILABLE, run
from sync_worker.sinks import Sink
from tests.fixtures.servers import ROLE_TOKENS, Replica, ServiceFactory
from tests.reliability import SkewedClock

from . import (
    PASSWORD,
    RecordingSink,
    WorkerRun,
    connect,
    email_of,
    make_config,
    run_recorded,
    run_worker,
    status,
    summaries,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend() -> str:
    """The auth service's database: SQLite only in this module."""
    return "sqlite"


def assert_released_unsynced(service: Replica, user_id: str) -> None:
    """The attempt counted, the session is untouched, synced_through did not move."""
    after = status(service, user_id)
    assert after.state == pb.SESSION_STATE_ACTIVE
    assert after.invalidated_reason == ""
    assert not after.HasField("lease")
    assert not after.HasField("synced_through")
    assert after.HasField("last_sync_attempt_at")


# --- Garmin -----------------------------------------------------------------------------


def test_429_stops_that_user_and_slows_the_whole_run(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "amy", activities=2)
    connect(service, garmin, "ben", activities=2)
    garmin.fail_next(ACTIVITIES_PATH, 429, retry_after=1)
    started = time.monotonic()

    result = run_worker(
        make_config(service.target, garmin, tmp_path, users=("amy", "ben"), concurrency=1)
    )

    assert result.exit_code == 0
    assert result.outcome("amy") == "RATE_LIMITED"
    assert result.outcome("ben") == "SYNCED"
    # ben's Garmin calls waited for the Retry-After second.
    assert time.monotonic() - started >= 1.0
    assert_released_unsynced(service, "amy")
    assert len(summaries(tmp_path, "ben")) == 2


def test_a_429_pause_longer_than_the_run_ends_it_without_waiting(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "amy", activities=1)
    connect(service, garmin, "ben", activities=1)
    garmin.fail_next(ACTIVITIES_PATH, 429, retry_after=3600)
    started = time.monotonic()

    result = run_worker(
        make_config(
            service.target, garmin, tmp_path, users=("amy", "ben"), concurrency=1, max_runtime=30
        )
    )

    assert time.monotonic() - started < 10
    assert result.exit_code == 0
    assert result.outcome("amy") == "RATE_LIMITED"
    # Nobody else is leased while Garmin's pause outlasts the run.
    assert "ben" not in result.users
    assert not status(service, "ben").HasField("last_sync_attempt_at")


def test_a_transient_5xx_is_retried(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "cat", activities=2)
    garmin.fail_next(ACTIVITIES_PATH, 503, count=2)

    result = run_worker(make_config(service.target, garmin, tmp_path, users=("cat",)))

    assert result.exit_code == 0
    assert result.outcome("cat") == "SYNCED"
    assert garmin.request_count(ACTIVITIES_PATH) == 3


def test_a_persistent_5xx_fails_the_user_without_invalidating(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "cat", activities=2)
    # Page 1 (the newest activity) answers; page 2 never does.
    garmin.fail_next(ACTIVITIES_PATH, None, count=1)
    garmin.fail_next(ACTIVITIES_PATH, 502, count=100)

    result = run_worker(make_config(service.target, garmin, tmp_path, users=("cat",), page_size=1))

    assert result.exit_code == 1
    assert result.outcome("cat") == "FAILED"
    # Bounded: page 1, then the configured attempts at page 2, then give up.
    assert garmin.request_count(ACTIVITIES_PATH) == 1 + 3
    # The newest activity is stored, but synced_through must not pass the unread one.
    assert len(summaries(tmp_path, "cat")) == 1
    assert_released_unsynced(service, "cat")


def test_a_garmin_outage_is_not_multiplied_by_the_run(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """Issue 14: Garmin answering 503 to everything fails a few users, with a growing pause
    between them, and then the run stops leasing users and exits 4."""
    users = ("gia", "hal", "ivo", "jon", "kim", "lou")
    for user in users:
        connect(service, garmin, user, activities=1)
    garmin.fail_next(ACTIVITIES_PATH, 503, count=1000)
    control = RunControl(max_garmin_unavailable=3, unavailable_backoff=0.2)
    started = time.monotonic()

    result = run_worker(
        make_config(service.target, garmin, tmp_path, all_users=True, concurrency=1),
        control=control,
    )

    assert result.exit_code == EXIT_GARMIN_UNAVAILABLE
    assert result.report.garmin_outage is not None
    assert "3 user(s) in a row" in result.report.garmin_outage
    assert [line["outcome"] for line in result.lines[:-1]] == ["FAILED"] * 3
    # Three users, each with garmin_client's bounded attempts (1 + 2 retries), and no more.
    assert garmin.request_count(ACTIVITIES_PATH) == 3 * 3
    attempted = [user for user in users if status(service, user).HasField("last_sync_attempt_at")]
    assert len(attempted) == 3
    for user in attempted:
        assert_released_unsynced(service, user)
    # Backed off between them: 0.2 s, then 0.4 s.
    assert time.monotonic() - started >= 0.6


def test_a_user_garmin_serves_ends_the_count(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "max", activities=1)
    connect(service, garmin, "ned", activities=1)
    garmin.fail_next(ACTIVITIES_PATH, 503, count=3)  # max's three attempts; ned is served
    control = RunControl(max_garmin_unavailable=2, unavailable_backoff=0.05)

    result = run_worker(
        make_config(service.target, garmin, tmp_path, users=("max", "ned"), concurrency=1),
        control=control,
    )

    assert (result.outcome("max"), result.outcome("ned")) == ("FAILED", "SYNCED")
    assert result.exit_code == 1
    assert control.garmin_outage is None


def test_a_slow_upstream_within_the_timeout_still_syncs(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "dot", activities=2)
    garmin.latency_seconds = 0.3

    result = run_worker(
        make_config(service.target, garmin, tmp_path, users=("dot",), with_files=True)
    )

    assert result.outcome("dot") == "SYNCED"
    assert result.users["dot"]["items"] == 2


@pytest.mark.parametrize(
    ("path", "fault"),
    [(ACTIVITIES_PATH, "hang"), (DOWNLOAD_PREFIX, "hang"), (DOWNLOAD_PREFIX, "reset")],
    ids=["list-hangs", "download-hangs", "download-resets"],
)
def test_a_hanging_or_resetting_upstream_fails_the_user_in_bounded_time(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, path: str, fault: str
) -> None:
    connect(service, garmin, "eli", activities=2)
    garmin.fail_next(path, fault, count=100, delay=3)
    started = time.monotonic()

    result = run_worker(
        make_config(
            service.target,
            garmin,
            tmp_path,
            users=("eli",),
            with_files=True,
            upstream_timeout=0.4,
            upstream_retries=1,
        )
    )

    assert time.monotonic() - started < 8
    assert result.exit_code == 1
    assert result.outcome("eli") == "FAILED"
    assert_released_unsynced(service, "eli")


# --- The auth service -------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_auth_service_down_at_start_exits_3(garmin: GarminEmulator, tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_worker(make_config(f"127.0.0.1:{closed_port()}", garmin, tmp_path, all_users=True))

    assert result.exit_code == 3
    assert result.report.fatal is not None
    assert result.report.fatal.unreachable
    assert result.summary["users"] == 0
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("all_users", [False, True], ids=["--user", "--all"])
def test_a_release_whose_synced_through_is_refused_still_ends_the_lease(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path, all_users: bool
) -> None:
    """The worker's clock runs 30 minutes ahead of the service's and a watch recorded an
    activity 10 minutes in the future: the service refuses the release's synced_through
    (INVALID_ARGUMENT). Before: the lease stayed held until its ttl (--all: the refused
    release rode on LeaseNextSession, and nothing released it alone)."""
    behind = service_factory.start(clock=SkewedClock(timedelta(minutes=-30)))
    email = connect(behind, garmin, "zoe")
    garmin.add_activities(email, 1, first_start=datetime.now(UTC) + timedelta(minutes=10))
    config = make_config(
        behind.target, garmin, tmp_path, users=() if all_users else ("zoe",), all_users=all_users
    )

    result = run_worker(config)

    assert result.outcome("zoe") == "FAILED"
    after = status(behind, "zoe")
    assert not after.HasField("lease")
    assert not after.HasField("synced_through")
    assert after.HasField("last_sync_attempt_at")
    assert len(summaries(tmp_path, "zoe")) == 1  # what was read is kept


@pytest.mark.parametrize(
    ("token", "reason"),
    [("not-a-known-token-0123456789", "CALLER_UNAUTHENTICATED"), (None, "CALLER_FORBIDDEN")],
    ids=["unknown-token", "viewer-role"],
)
def test_refused_worker_credentials_exit_3(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, token: str | None, reason: str
) -> None:
    connect(service, garmin, "fox", activities=1)
    config = make_config(
        service.target, garmin, tmp_path, users=("fox",), token=token or ROLE_TOKENS["viewer"]
    )

    result = run_worker(config)

    assert result.exit_code == 3
    assert result.report.fatal is not None
    assert result.report.fatal.credentials_refused
    assert result.report.fatal.reason == reason
    assert "fox" not in result.users


def test_auth_service_down_mid_run_exits_3_without_hanging(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    replica = service_factory.start()
    connect(replica, garmin, "gus", activities=3)
    connect(replica, garmin, "hal", activities=3)
    sink = RecordingSink(DirectorySink(tmp_path))

    def stop_service(event: object) -> None:
        if replica in service_factory.replicas:
            service_factory.replicas.remove(replica)
            replica.stop()

    sink.after_write = stop_service
    started = time.monotonic()

    result = run_worker(
        make_config(
            replica.target, garmin, tmp_path, users=("gus", "hal"), concurrency=1, page_size=1
        ),
        sink=sink,
    )

    assert time.monotonic() - started < 20
    assert result.exit_code == 3
    assert result.report.fatal is not None
    assert result.report.fatal.unreachable
    # The user in flight could not be released: FAILED; nobody else was taken.
    assert result.outcome("gus") == "FAILED"
    assert "hal" not in result.users


def test_a_user_leased_by_someone_else_is_left_alone(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "ida", activities=1)
    service.call("LeaseSession", pb.LeaseSessionRequest(user_id="ida", holder="other"), "worker")

    result = run_worker(make_config(service.target, garmin, tmp_path, users=("ida", "ghost")))

    assert result.outcome("ida") == "LEASE_LOST"
    assert not (tmp_path / "ida").exists()
    # An unknown user is an operator's mistake: FAILED, exit 1.
    assert result.outcome("ghost") == "FAILED"
    assert result.exit_code == 1
    assert status(service, "ida").lease.holder == "other"


# --- A lease lost mid-run ---------------------------------------------------------------


class RenewalWatcher(AuthClient):
    """The real client; notes when a renewal answers LEASE_LOST."""

    lost: threading.Event

    def renew_lease(self, lease_id: str, ttl: timedelta | None) -> datetime:
        try:
            return super().renew_lease(lease_id, ttl)
        except AuthServiceError as exc:
            if exc.lease_lost:
                self.lost.set()
            raise


def sink_of_kind(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Sink, str | None]:
    if kind == "postgresql":
        url = str(request.getfixturevalue("sink_url"))
        return PostgresSink(url), url
    return DirectorySink(tmp_path), None


def reconnect(service: Replica, user: str) -> None:
    """The user disconnects Garmin and logs in again: any live lease on the user ends."""
    service.call("DeleteSession", pb.DeleteSessionRequest(user_id=user))
    service.call("Login", pb.LoginRequest(user_id=user, email=email_of(user), password=PASSWORD))


@pytest.mark.parametrize(
    ("guard", "sink_kind"),
    [("renewal", "directory"), ("fencing", "directory"), ("fencing", "postgresql")],
)
def test_a_stale_worker_writes_nothing_after_a_takeover(
    service: Replica,
    garmin: GarminEmulator,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    guard: str,
    sink_kind: str,
) -> None:
    """Worker A is stalled after its first write when its lease ends (DeleteSession, a new
    login) and worker B syncs the user. A must write nothing after that: either its renewal
    answers LEASE_LOST first ("renewal"), or, renewing too rarely to notice, the sink refuses
    its lower fencing token ("fencing")."""
    user = "joy"
    connect(service, garmin, user, activities=6)
    inner, sink_url = sink_of_kind(sink_kind, tmp_path, request)
    # "fencing": a long ttl renewed at 95% of it, so A cannot learn of the loss in time.
    ttl, fraction = (5, 1 / 3) if guard == "renewal" else (60, 0.95)
    stale_config = make_config(
        service.target,
        garmin,
        tmp_path,
        users=(user,),
        holder="worker-a",
        page_size=1,
        lease_ttl=timedelta(seconds=ttl),
        renew_fraction=fraction,
        sink_url=sink_url,
    )
    stale_client = RenewalWatcher(stale_config.auth)
    stale_client.lost = threading.Event()
    stale_sink = RecordingSink(inner)
    first_write, fresh_done = threading.Event(), threading.Event()

    def stall(_event: object) -> None:
        # A stalls (as in a slow Garmin call) until B has synced the user.
        if not first_write.is_set():
            first_write.set()
            assert fresh_done.wait(30)
            if guard == "renewal":
                assert stale_client.lost.wait(30)

    stale_sink.after_write = stall
    stale: list[WorkerRun] = []
    thread = threading.Thread(
        target=lambda: stale.append(run_worker(stale_config, client=stale_client, sink=stale_sink))
    )
    thread.start()
    try:
        assert first_write.wait(30)
        reconnect(service, user)
        fresh_sink = RecordingSink(inner)
        fresh = run_worker(
            make_config(
                service.target,
                garmin,
                tmp_path,
                users=(user,),
                holder="worker-b",
                page_size=1,
                sink_url=sink_url,
            ),
            sink=fresh_sink,
        )
        [takeover] = fresh_sink.of("claim")
    finally:
        fresh_done.set()
        thread.join(30)
        stale_client.close()
    [stale_run] = stale

    assert fresh.outcome(user) == "SYNCED"
    # A's one item: in the PostgreSQL sink at once; the directory sink puts items in place at
    # A's commit, which never comes (its lease is lost), so B writes all six there.
    assert fresh.users[user]["items"] == (5 if sink_kind == "postgresql" else 6)
    assert stale_run.outcome(user) == "LEASE_LOST"
    assert stale_run.exit_code == 0
    # A's one write happened before B took over; nothing of A's after.
    stale_writes = stale_sink.of("write")
    assert len(stale_writes) == 1
    assert stale_writes[0].at < takeover.at
    refused = stale_sink.of("refused")
    # With frequent renewals A learns of the loss before trying; otherwise the fence says no
    # to A's next page: the item read last, asked again at the page boundary, and the next.
    assert len(refused) == (0 if guard == "renewal" else 2)
    assert all(event.fencing_token < takeover.fencing_token for event in refused)
    after = status(service, user)
    assert not after.HasField("lease")
    assert after.HasField("synced_through")


def test_a_refused_carried_release_makes_the_user_lease_lost_and_the_drain_goes_on(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """The user reconnects after the worker's last write: the release riding on the next
    LeaseNextSession is refused (LEASE_LOST, nothing granted by that call), the user counts
    as LEASE_LOST, and the worker asks again without it (and hands back what it gets: a
    user it already did in this run)."""
    connect(service, garmin, "ann", activities=1)
    config = make_config(service.target, garmin, tmp_path, all_users=True, concurrency=1)
    sink = RecordingSink(DirectorySink(tmp_path))
    reconnected: list[str] = []

    def reconnect_once(_event: object) -> None:
        if not reconnected:
            reconnected.append("ann")
            reconnect(service, "ann")

    sink.after_write = reconnect_once
    result, calls = run_recorded(config, sink=sink)

    assert [line["outcome"] for line in result.lines[:-1]] == ["LEASE_LOST"]
    assert result.exit_code == 0
    assert calls == ["LeaseNextSession+release", "ReleaseLease"]
    after = status(service, "ann")
    assert not after.HasField("lease")
    assert not after.HasField("synced_through")  # the refused release recorded nothing


class _BrokenOut(io.StringIO):
    """stdout that fails on the first user line (a pipe whose reader died, a full disk):
    the one failure a sync thread's loop does not expect."""

    def write(self, text: str) -> int:
        if '"user_id"' in text:
            raise OSError(errno.EPIPE, "Broken pipe")
        return super().write(text)


def test_a_sync_thread_that_dies_of_a_bug_fails_the_run_not_as_sigterm(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """Before: the run stopped as after SIGTERM and exited 143, which a CronJob reads as the
    node's doing, not as a failed run."""
    connect(service, garmin, "pia", activities=1)
    config = make_config(service.target, garmin, tmp_path, users=("pia",))

    report = run(config, out=_BrokenOut(), err=io.StringIO())

    assert not report.stopped
    assert report.exit_code == 1


def test_a_drain_whose_settings_the_service_refuses_exits_2(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """The operator lowered GARMIN_AUTH_LEASE_MAX_TTL to 10 minutes and the CronJob asks 15:
    every LeaseNextSession answers INVALID_ARGUMENT. Before, each thread gave up after three
    and the run exited 0 ('nothing was due'), a green CronJob that synced nobody."""
    service = service_factory.start(leases=LeaseSettings(default_ttl=300, max_ttl=600))
    connect(service, garmin, "amy", activities=2)
    config = make_config(service.target, garmin, tmp_path, all_users=True, concurrency=2)
    config = dataclasses.replace(
        config, sync=dataclasses.replace(config.sync, lease_ttl=timedelta(minutes=15))
    )

    result = run_worker(config)

    assert result.exit_code == 2
    assert result.report.settings_refused is not None
    assert "ttl" in str(result.report.settings_refused)
    assert not status(service, "amy").HasField("last_sync_attempt_at")


def test_a_drain_that_gives_up_on_lease_next_session_exits_1(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """A worker token holding a character gRPC refuses in a header: every LeaseNextSession
    fails INTERNAL before reaching the service (a service bug's INTERNAL or UNKNOWN, or a
    grant the worker cannot read, take the same path). Before, each thread gave up after
    three in a row and the run exited 0 ('nothing was due'), a green CronJob that synced
    nobody; the same run with --user exits 1, each user FAILED."""
    connect(service, garmin, "vic", activities=2)
    config = make_config(service.target, garmin, tmp_path, all_users=True, token="wörker-token")

    result = run_worker(config)

    assert result.exit_code == 1
    assert result.users == {}
    assert result.report.fatal is None
    assert "LeaseNextSession failed 3 times in a row" in str(result.report.drain_failure)
    assert not status(service, "vic").HasField("last_sync_attempt_at")
