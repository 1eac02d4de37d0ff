"""Sync throughput: `garmin-sync-worker run --all --concurrency 16` draining 200 due users
through the service, against the Garmin emulator answering every request after 50 ms.

    .venv/bin/python -m benchmarks.sync_throughput [--rounds 3] [--users 200]
        [--activities 20] [--latency 0.05] [--concurrency 16] [--out-base DIR | --ext4-volume]
        [--sink-database] [--quick] [--profile DIR] [--pin-cpus CPU] [--service-revision REV]
        [--against REV [--pairs 3]]

The emulator runs as its own process (`--latency`, `--users-from-file`: 200 accounts with 20
activities each, the newest an hour ago, one a day). Its access tokens live 30 days, so no
lease needs a central refresh and garth never refreshes (`garmin_refreshes` counts the token
exchanges during the runs to prove it). The service (`service_stack`, PostgreSQL, its metrics
endpoint on) logs every user in with the admin Login RPC: each session holds tokens the
emulator issued through garth's real SSO and OAuth flow.

Each round runs the real console script `garmin-sync-worker run --all --concurrency 16 --out
<fresh dir>` as a subprocess and reads, around it:

- requests: the emulator's request counters (GET /__emulator/request-counts) before and after,
  so every request the worker sent to Garmin is counted, not assumed. The worker's known
  pattern is one activity-list page per user (20 activities < --page-size 100) and no
  download without --with-files: 1 request per user (`garmin_requests_per_user` checks it).
- ideal = requests x latency / concurrency: the wall time if the worker only ever waited for
  Garmin, 16 requests at a time.
- wall: the worker's own run time (the `seconds` of its summary line: from its run() start,
  after the imports, until the last thread finds nothing due). `worker_process_wall_per_round`
  adds the process's start-up and exit (imports: ~1 s, unrelated to the number of users).
- auth share: the time the service spent handling the worker's RPCs in the window (the sum of
  grpc_server_handling_seconds over every GarminAuthService method, from its metrics endpoint)
  / concurrency / wall: the share of the 16 threads' time spent inside the service. It leaves
  out the network and the client's gRPC work, so it is a lower bound of the worker's waiting;
  `outside_user_share` is the client-side view: the share of thread time outside every user's
  sync (LeaseNextSession calls, picking the next user, thread start and stop). The share
  grows as the worker gets faster (same RPC time, shorter wall): `auth_share_at_ideal_wall`
  is what it would be if the wall were the ideal one.
- CPU per user: the service process (utime+stime over the window), the benchmark database's
  PostgreSQL backends (a lower bound), the emulator process, and the worker (its rusage minus
  that of a run that found nothing due: imports and start-up left out).
  `cpu_floor_wall_per_round` is all of that divided by the machine's cores: no schedule on
  this machine can finish sooner.
  `other_cpu` is what the rest of the machine burned meanwhile (another run on a shared box).
- PostgreSQL operations per user: pg_stat_database's xact_commit, xact_rollback and
  tup_inserted/updated/deleted of the service's database around each round (read 1.5 s after
  it, when idle backends have reported their counters).

Targets (issue 15): sync_cpu_ms_per_user = worker + service + PostgreSQL CPU per user (the
emulator stands for Garmin and is left out) <= 5 ms; sync_wall_vs_ideal <= 1.5; and
auth_share_of_wall <= 5%. The worker's directory sink flushes each user's items once
(syncfs) at its commit, renames them and fsyncs the user's directory once
(sync_worker.directory_sink); every round writes into a fresh --out directory, so every sync
is a user's first (its folder and the root are fsynced too).

Between rounds every session is made due and never-synced again, so each round syncs 20 new
activities per user again, into a fresh directory (`--out-base DIR` chooses where: a tmpfs
such as /dev/shm takes the filesystem out; `--ext4-volume` puts them on a fresh ext4
filesystem of their own, as deploy/ gives the worker a volume of its own), or into the emptied
PostgreSQL sink with `--sink-database`. Figures are totals over the rounds.
`--profile DIR` runs one more round with the worker under py-spy and summarises where it went.
`--pin-cpus CPU` confines the service to one CPU (benchmarks.cpu_pinning; the worker, the
emulator and PostgreSQL stay free).
`--service-revision REV` runs the service AND the worker from that revision (the emulator
stays the working tree's). `--against REV` runs `--pairs` pairs, REV then the code under test,
each a whole run on a fresh stack, and prints each side's CPU per user and wall per run and
the ratios of their means (`*_test_vs_base`): on this 2-core VM single runs swing ±20%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import requests
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import cpu_pinning, ext4_volume
from benchmarks.harness import (
    CONSUMER_KEY,
    CONSUMER_SECRET,
    TABLE,
    CpuSample,
    Credentials,
    EmulatorProcess,
    PostgresDatabase,
    Report,
    ServiceProcess,
    ServiceTree,
    Workdir,
    clean_environment,
    free_port,
    log,
    process_cpu_seconds,
    ratio,
    run_reported,
    service_stack,
    stop_process,
    user_id,
    venv_script,
)
from benchmarks.profile_server import parse_frame
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_emulator import EXCHANGE_PATH, REQUEST_COUNTS_PATH

USERS = 200
ACTIVITIES = 20
LATENCY_SECONDS = 0.05
CONCURRENCY = 16
ROUNDS = 3
# Room for 16,000 small items and their inodes (ext4 makes one inode per 16 KiB).
EXT4_VOLUME_MB = 1024
WALL_VS_IDEAL_GOAL = 1.5
# Issue 15: worker + service + PostgreSQL CPU per user synced (the emulator stands for Garmin).
SYNC_CPU_MS_PER_USER_GOAL = 5.0
AUTH_SHARE_GOAL = 0.05
# Access tokens the emulator issues live this long: no lease or garth call ever refreshes.
TOKEN_LIFETIME_SECONDS = 30 * 86400
LOGIN_IN_FLIGHT = 16
WORKER_TIMEOUT_SECONDS = 600.0
RPC_TIMEOUT_SECONDS = 30.0
SERVICE_NAME = "garmin_auth.v1.GarminAuthService"
PASSWORD = "bench-password"  # noqa: S105 - the emulator's benchmark accounts
PROFILE_RATE = 250
PROFILE_TOP = 25


def email_of(index: int) -> str:
    return f"{user_id(index)}@emulator.example"


# --- readings ----------------------------------------------------------------------------


def emulator_counts(url: str) -> Counter[str]:
    """Requests the emulator received, by path (its control endpoint counts nothing)."""
    answer = requests.get(f"{url}{REQUEST_COUNTS_PATH}", timeout=10)
    answer.raise_for_status()
    return Counter({str(path): int(n) for path, n in answer.json().items()})


def child_with_argument(argument: str) -> int:
    """The pid of this process's child whose command line has `argument` (our emulator)."""
    me = os.getpid()
    children = Path(f"/proc/{me}/task/{me}/children").read_text(encoding="ascii").split()
    for pid in children:
        with contextlib.suppress(OSError):
            if argument.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return int(pid)
    raise RuntimeError(f"no child process runs with {argument}")


@dataclass(frozen=True)
class Handling:
    """grpc_server_handling_seconds of the service's RPCs: (seconds, calls) by method."""

    by_method: dict[str, tuple[float, float]]

    @classmethod
    def scrape(cls, metrics_url: str) -> Handling:
        sums: defaultdict[str, float] = defaultdict(float)
        counts: defaultdict[str, float] = defaultdict(float)
        text = requests.get(metrics_url, timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name != "grpc_server_handling_seconds":
                continue
            for sample in family.samples:
                if sample.labels.get("grpc_service") != SERVICE_NAME:
                    continue
                method = sample.labels["grpc_method"]
                if sample.name.endswith("_sum"):
                    sums[method] += sample.value
                elif sample.name.endswith("_count"):
                    counts[method] += sample.value
        return cls({method: (sums[method], counts[method]) for method in counts})

    def until(self, later: Handling) -> Handling:
        """What the RPCs between the two scrapes added, by method (those that ran)."""
        spent = {}
        for method, (seconds, calls) in later.by_method.items():
            old_seconds, old_calls = self.by_method.get(method, (0.0, 0.0))
            if calls > old_calls:
                spent[method] = (seconds - old_seconds, calls - old_calls)
        return Handling(spent)

    def plus(self, other: Handling) -> Handling:
        merged = dict(self.by_method)
        for method, (seconds, calls) in other.by_method.items():
            old_seconds, old_calls = merged.get(method, (0.0, 0.0))
            merged[method] = (old_seconds + seconds, old_calls + calls)
        return Handling(merged)

    @property
    def seconds(self) -> float:
        return sum(seconds for seconds, _ in self.by_method.values())

    @property
    def calls(self) -> float:
        return sum(calls for _, calls in self.by_method.values())


# --- the worker --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRun:
    """One `garmin-sync-worker run --all`, as a subprocess."""

    exit_code: int
    process_wall: float
    cpu: float  # rusage of the process: utime + stime
    system_cpu: float  # of which stime
    seconds: float  # the worker's own run time (its summary line)
    outcomes: Counter[str]
    items: int
    user_seconds: float  # every user's sync time (lease granted -> released), summed

    @property
    def users(self) -> int:
        return sum(self.outcomes.values())


def worker_environment(credentials: Credentials, target: str, upstream: str) -> dict[str, str]:
    base = {k: v for k, v in clean_environment().items() if not k.startswith("GARMIN_SYNC_")}
    return {
        **base,
        "GARMIN_SYNC_AUTH_TARGET": target,
        "GARMIN_SYNC_AUTH_TOKEN": credentials.worker_token,
        "GARMIN_SYNC_UPSTREAM_URL": upstream,
        "GARMIN_SYNC_OAUTH_CONSUMER_KEY": CONSUMER_KEY,
        "GARMIN_SYNC_OAUTH_CONSUMER_SECRET": CONSUMER_SECRET,
    }


def run_worker(
    env: dict[str, str],
    sink: Sequence[str],
    concurrency: int,
    log_path: Path,
    wrapper: Sequence[str] = (),
    processes: int = 1,
) -> WorkerRun:
    """The console script as a CronJob runs it (under `wrapper`, e.g. py-spy, if given): its
    stdout parsed, its CPU from rusage. `processes` > 1: that many workers at once (a CronJob
    with that parallelism), `concurrency` threads in all, the same sink; their figures added
    up, the wall the longest run's."""
    command = [
        *wrapper,
        venv_script("garmin-sync-worker"),
        "run",
        "--all",
        "--concurrency",
        str(concurrency // processes),
        *sink,
    ]
    paths = (
        [log_path]
        if processes == 1
        else [
            log_path.with_name(f"{log_path.stem}.p{number}{log_path.suffix}")
            for number in range(processes)
        ]
    )
    with contextlib.ExitStack() as files:
        # Only these children are reaped in between: the difference is their rusage.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        running = [
            subprocess.Popen(
                command,
                env=env,
                stdout=files.enter_context(path.with_suffix(".out").open("wb")),
                stderr=files.enter_context(path.open("wb")),
            )
            for path in paths
        ]
        try:
            exit_codes = [process.wait(WORKER_TIMEOUT_SECONDS) for process in running]
        except subprocess.TimeoutExpired:
            for process in running:
                stop_process(process)
            raise RuntimeError(f"the worker did not end in time; see {log_path}") from None
        process_wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    system_cpu = after.ru_stime - before.ru_stime
    cpu = after.ru_utime - before.ru_utime + system_cpu
    outcomes: Counter[str] = Counter()
    items, user_seconds, summaries = 0, 0.0, []
    for path in paths:
        for record in _records(path.with_suffix(".out")):
            if "summary" in record:
                summaries.append(float(record["seconds"]))
            else:
                outcomes[record["outcome"]] += 1
                items += int(record["items"])
                user_seconds += float(record["seconds"])
    seconds = max(summaries) if len(summaries) == processes else float("nan")
    return WorkerRun(
        max(exit_codes), process_wall, cpu, system_cpu, seconds, outcomes, items, user_seconds
    )


def _records(stdout_path: Path) -> Iterator[dict[str, Any]]:
    """The worker's JSON lines (a user's result, or the run's summary)."""
    for line in stdout_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):  # not py-spy's own lines, when it wraps the worker
            yield json.loads(line)


# --- the stack ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """Everything a round needs."""

    workdir: Path
    out_base: Path
    sink_database: PostgresDatabase | None
    database: PostgresDatabase
    service: ServiceProcess
    emulator_url: str
    emulator_pid: int
    metrics_url: str
    worker_env: dict[str, str]


def login_everyone(target: str, credentials: Credentials, users: int) -> None:
    """The admin Login RPC for every user: the service logs in at the emulator with garth."""
    metadata = (("authorization", f"Bearer {credentials.admin_token}"),)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GarminAuthServiceStub(channel)

        def login(index: int) -> int:
            request = pb.LoginRequest(
                user_id=user_id(index), email=email_of(index), password=PASSWORD
            )
            answer = stub.Login(request, metadata=metadata, timeout=RPC_TIMEOUT_SECONDS)
            return int(answer.outcome)

        with ThreadPoolExecutor(LOGIN_IN_FLIGHT) as pool:
            outcomes = Counter(pool.map(login, range(users)))
    if outcomes != Counter({pb.LOGIN_OUTCOME_AUTHENTICATED: users}):
        raise RuntimeError(f"not every login succeeded: {dict(outcomes)}")


def sink_for(stack: Stack, run: int | str) -> list[str]:
    """The worker's sink flags for one run: a fresh directory, or the emptied sink database
    (so every run writes every activity as new)."""
    if stack.sink_database is None:
        return ["--out", str(stack.out_base / f"out-{run}")]
    stack.sink_database.execute("TRUNCATE garmin_activity, garmin_sync_fence")
    return ["--sink", stack.sink_database.url]


@contextlib.contextmanager
def sink_database(enabled: bool, env: dict[str, str]) -> Iterator[PostgresDatabase | None]:
    """With --sink-database: a throw-away database for the worker's PostgreSQL sink."""
    if not enabled:
        yield None
        return
    with PostgresDatabase() as database:
        subprocess.run(
            [venv_script("garmin-sync-worker"), "init-sink", "--sink", database.url],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        )
        yield database


def make_all_due(database: PostgresDatabase) -> None:
    """Every session due and never synced: the next run reads all activities as new again."""
    database.execute(
        f"UPDATE {TABLE} SET last_synced_at = NULL, synced_through = NULL, "
        "last_sync_attempt_at = NULL"
    )
    database.vacuum_analyze()


# --- rounds ------------------------------------------------------------------------------


@dataclass
class Totals:
    """What the measured rounds add up to."""

    runs: list[WorkerRun] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    handling: Handling = field(default_factory=lambda: Handling({}))
    server_cpu: float = 0.0
    postgres_cpu: float = 0.0
    emulator_cpu: float = 0.0
    machine_cpu: float = 0.0
    window: float = 0.0
    database: Counter[str] = field(default_factory=Counter)


DATABASE_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")
# Backends report their statistics when idle, at most once a second: wait that long before
# reading the counters after a round.
STATS_SETTLE_SECONDS = 1.5


def database_counters(database: PostgresDatabase) -> Counter[str]:
    """pg_stat_database's transaction and row counters of the service's database (the
    reading's own transaction is counted by the next reading: one per reading, taken off)."""
    columns = ", ".join(DATABASE_COUNTERS)
    [row] = database.execute(
        f"SELECT {columns} FROM pg_stat_database WHERE datname = current_database()"
    )
    return Counter(dict(zip(DATABASE_COUNTERS, (int(value) for value in row), strict=True)))


def measure_round(args: argparse.Namespace, stack: Stack, totals: Totals, number: int) -> None:
    log_path = stack.workdir / f"worker-{number}.log"
    service = [stack.service.pid]
    counts_before = emulator_counts(stack.emulator_url)
    handling_before = Handling.scrape(stack.metrics_url)
    emulator_before = process_cpu_seconds(stack.emulator_pid)
    time.sleep(STATS_SETTLE_SECONDS)
    database_before = database_counters(stack.database)
    cpu_before = CpuSample.take(service, stack.database.name)
    run = run_worker(
        stack.worker_env,
        sink_for(stack, number),
        args.concurrency,
        log_path,
        processes=args.worker_processes,
    )
    cpu = cpu_before.until(CpuSample.take(service, stack.database.name))
    emulator_cpu = process_cpu_seconds(stack.emulator_pid) - emulator_before
    time.sleep(STATS_SETTLE_SECONDS)
    database_after = database_counters(stack.database)
    database_after.subtract(database_before)
    database_after["xact_commit"] -= 1
    handling = handling_before.until(Handling.scrape(stack.metrics_url))
    requests_ = emulator_counts(stack.emulator_url)
    requests_.subtract(counts_before)
    if run.exit_code != 0 or run.users != args.users:
        raise RuntimeError(
            f"round {number}: the worker exited {run.exit_code} after {run.users} users "
            f"({dict(run.outcomes)}); see {log_path}"
        )
    totals.runs.append(run)
    totals.requests.update(+requests_)
    totals.handling = totals.handling.plus(handling)
    totals.server_cpu += cpu.server
    totals.postgres_cpu += cpu.postgres
    totals.emulator_cpu += emulator_cpu
    totals.machine_cpu += cpu.machine
    totals.database.update(database_after)
    totals.window += cpu.wall
    log(
        f"round {number}: {run.users} users in {run.seconds:.3f} s "
        f"({sum(requests_.values())} Garmin requests; process {run.process_wall:.2f} s)"
    )


def profile_round(args: argparse.Namespace, stack: Stack) -> tuple[WorkerRun, Path]:
    """One more round with the worker under py-spy, every thread sampled, idle or not (raw
    collapsed stacks in args.profile)."""
    make_all_due(stack.database)
    args.profile.mkdir(parents=True, exist_ok=True)
    raw = args.profile / "worker.collapsed.txt"
    log(f"one more round with the worker under py-spy -> {raw}")
    spy = [venv_script("py-spy"), "record", "--rate", str(PROFILE_RATE)]
    spy += [] if args.profile_on_cpu else ["--idle"]
    spy += ["--format", "raw", "--output", str(raw), "--"]
    run = run_worker(
        stack.worker_env,
        sink_for(stack, "profiled"),
        args.concurrency,
        stack.workdir / "worker-profiled.log",
        spy,
    )
    return run, raw


# Where a sync thread's time goes: (what, a function label the stack must contain). Every
# sample of a sync thread (idle or not, so waits count) lands in the first that matches.
THREAD_TIME: tuple[tuple[str, str], ...] = (
    ("LeaseNextSession (gRPC call, waiting included)", "AuthClient.lease_next_session"),
    ("ReleaseLease (gRPC call, waiting included)", "AuthClient.release_lease"),
    ("Garmin: activity list (HTTP, its 50 ms included)", "ConnectApi.get_json"),
    ("Garmin: client set-up and close", "ConnectApi."),
    ("sink: summaries (temp file, fence)", "_DirectoryUserSink.write_summaries"),
    ("sink: commit (syncfs, renames, directory fsync)", "_DirectoryUserSink.commit"),
    ("sink: claim and close (fence file)", "_DirectoryUserSink"),
    ("sink: claim and close (fence file)", "DirectorySink.for_user"),
    ("lease keeper start/stop", "LeaseKeeper."),
    ("result line and progress", "_Run.emit"),
    ("activity parsing", "parse_activity"),
)
SYNC_THREAD = "_Run.drain_loop"


def print_profile(raw: Path, run: WorkerRun, *, on_cpu: bool = False) -> None:
    """The sync threads' time by operation, and their top functions by self time."""
    shares: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or SYNC_THREAD not in stack_text:
            continue
        count = int(count_text)
        frames = [parse_frame(part) for part in stack_text.split(";")]
        labels = [frame.label for frame in frames if frame.file]
        total += count
        leaves[labels[-1]] += count
        what = next((name for name, marker in THREAD_TIME if any(marker in x for x in labels)), "")
        shares[what or "other (picking the next user, thread pool)"] += count
    print(f"# worker under py-spy: run {run.seconds:.2f} s (unprofiled rounds above)")
    sampled = "on CPU only" if on_cpu else "waits included"
    print(f"# sync threads' time ({total} samples at {PROFILE_RATE} Hz, {sampled}):")
    for name, count in shares.most_common():
        print(f"#   {count / max(total, 1):6.1%}  {name}")
    print(f"# top {PROFILE_TOP} functions by self time in the sync threads:")
    for label, count in leaves.most_common(PROFILE_TOP):
        print(f"#   {count / max(total, 1):6.1%}  {label}")


# --- the report --------------------------------------------------------------------------


def report_database(report: Report, counters: Counter[str], users: int) -> None:
    """PostgreSQL's work per synced user, from its own counters (the service's database; the
    sink's, with --sink-database, is another one)."""
    for counter in DATABASE_COUNTERS:
        report.figure(f"postgres_{counter}_per_user", ratio(counters[counter], users), "")


def report_cpu_target(
    report: Report, totals: Totals, worker_cpu: float, per_user_ms: float
) -> None:
    """Worker + service + PostgreSQL CPU per user, the split on a note line."""
    ours = worker_cpu + totals.server_cpu + totals.postgres_cpu
    report.note(
        f"CPU per user: worker {worker_cpu * per_user_ms:.2f} + service "
        f"{totals.server_cpu * per_user_ms:.2f} + PostgreSQL "
        f"{totals.postgres_cpu * per_user_ms:.2f} ms (emulator "
        f"{totals.emulator_cpu * per_user_ms:.2f} ms, not counted)"
    )
    report.at_most("sync_cpu_ms_per_user", ours * per_user_ms, SYNC_CPU_MS_PER_USER_GOAL)


def report_totals(
    args: argparse.Namespace, report: Report, totals: Totals, empty: WorkerRun
) -> None:
    runs = totals.runs
    users = sum(run.users for run in runs)
    wall = sum(run.seconds for run in runs)
    garmin_requests = sum(totals.requests.values())
    ideal = garmin_requests * args.latency / args.concurrency
    worker_cpu = sum(run.cpu - empty.cpu for run in runs)
    worker_system = sum(run.system_cpu - empty.system_cpu for run in runs)
    cores = os.cpu_count() or 1
    all_cpu = worker_cpu + totals.server_cpu + totals.postgres_cpu + totals.emulator_cpu
    per_user_ms = 1000 / users if users else float("nan")

    report.figure("users", users, "users")
    report.figure("rounds", len(runs), "rounds")
    report.figure("users_per_s", ratio(users, wall), "users/s")
    report.figure("wall_per_round", wall / len(runs), "s")
    report.figure("ideal_wall_per_round", ideal / len(runs), "s")
    report.figure("cpu_floor_wall_per_round", all_cpu / cores / len(runs), "s")
    report.figure(
        "worker_process_wall_per_round", statistics.mean(r.process_wall for r in runs), "s"
    )
    report.figure("garmin_requests_per_user", ratio(garmin_requests, users), "requests")
    report.figure("garmin_refreshes", totals.requests.get(EXCHANGE_PATH, 0), "exchanges")
    report.figure("items_per_user", ratio(sum(run.items for run in runs), users), "activities")
    report.figure("auth_rpcs_per_user", ratio(totals.handling.calls, users), "rpcs")
    report.figure("auth_handling_per_user", totals.handling.seconds * per_user_ms, "ms")
    for method, (seconds, calls) in sorted(totals.handling.by_method.items()):
        report.figure(f"auth_{method}_mean", 1000 * ratio(seconds, calls), "ms")
    report.figure(
        "auth_share_at_ideal_wall",
        ratio(totals.handling.seconds / args.concurrency, ideal),
        "fraction",
    )
    thread_time = args.concurrency * wall
    outside = 1 - ratio(sum(run.user_seconds for run in runs), thread_time)
    report.figure("outside_user_share", outside, "fraction")
    report.figure("worker_cpu_per_user", worker_cpu * per_user_ms, "ms")
    report.figure("worker_cpu", ratio(worker_cpu, wall), "cores")
    report.figure("worker_system_cpu_share", ratio(worker_system, worker_cpu), "fraction")
    report.figure("worker_startup_cpu", empty.cpu, "s")
    report.figure("server_cpu_per_user", totals.server_cpu * per_user_ms, "ms")
    report.figure("server_cpu", ratio(totals.server_cpu, totals.window), "cores")
    report.figure("postgres_cpu_per_user", totals.postgres_cpu * per_user_ms, "ms")
    report.figure("emulator_cpu_per_user", totals.emulator_cpu * per_user_ms, "ms")
    report_database(report, totals.database, users)
    worker_process_cpu = sum(run.cpu for run in runs)
    other = totals.machine_cpu - totals.server_cpu - totals.postgres_cpu - totals.emulator_cpu
    other -= worker_process_cpu
    report.figure("other_cpu", max(other, 0.0) / totals.window, "cores")
    report.note(
        "Garmin requests by path: "
        + ", ".join(f"{path} {n}" for path, n in sorted(totals.requests.items()))
    )
    outcomes = sum((run.outcomes for run in runs), Counter[str]())
    report.note(
        "wall per round (s): "
        + ", ".join(f"{run.seconds:.3f}" for run in runs)
        + f"; outcomes: {dict(outcomes)}"
    )
    report.note(
        "requests: the emulator's own counters (GET /__emulator/request-counts) around each "
        "run; ideal = requests x latency / concurrency"
    )
    report.note(
        "auth share = sum of grpc_server_handling_seconds over the window's GarminAuthService "
        "RPCs / concurrency / wall (server-side handling; network and client excluded)"
    )
    report_cpu_target(report, totals, worker_cpu, per_user_ms)
    report.at_most("sync_wall_vs_ideal", ratio(wall, ideal), WALL_VS_IDEAL_GOAL)
    auth_share = ratio(totals.handling.seconds / args.concurrency, wall)
    report.at_most("auth_share_of_wall", auth_share, AUTH_SHARE_GOAL)


# --- the run -----------------------------------------------------------------------------


@contextlib.contextmanager
def out_base(workdir: Path, parent: str | None, ext4_mb: int | None = None) -> Iterator[Path]:
    """Where the rounds' --out directories go: the workdir, a fresh directory in `parent`
    (removed at the end), or a fresh ext4 volume of `ext4_mb` MiB (benchmarks.ext4_volume)."""
    if ext4_mb is not None:
        with ext4_volume.fresh_ext4(ext4_mb) as volume:
            yield volume
        return
    if parent is None:
        yield workdir
        return
    base = Path(tempfile.mkdtemp(prefix="garmin-sync-bench-", dir=parent))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def run(args: argparse.Namespace, report: Report) -> None:
    report.note(f"machine: {os.cpu_count()} cores, {load_note()} at the start")
    with Workdir() as workdir:
        tree = ServiceTree(workdir, args.service_revision)
        report.note(f"service and worker code: {tree.describe()}")
        where = args.out_base or tempfile.gettempdir()
        if args.ext4_volume is not None:
            where = f"a fresh {args.ext4_volume} MiB ext4 volume (loop-mounted image)"
        where = "its PostgreSQL sink" if args.sink_database else f"--out directories in {where}"
        report.note(f"the worker writes to {where}")
        if args.worker_processes > 1:
            threads = args.concurrency // args.worker_processes
            report.note(f"{args.worker_processes} worker processes at once, {threads} threads each")
        users_file = workdir / "garmin-users.txt"
        users_file.write_text(
            "".join(f"{email_of(i)}:{PASSWORD}\n" for i in range(args.users)), encoding="utf-8"
        )
        emulator_args = [
            *("--users-from-file", str(users_file), "--activities", str(args.activities)),
            *("--latency", str(args.latency)),
            *("--access-token-expires-in", str(TOKEN_LIFETIME_SECONDS)),
        ]
        metrics_port = free_port()
        with EmulatorProcess(workdir / "garmin-emulator.log", emulator_args) as emulator:
            # service_stack starts an emulator of its own, left idle: the service is pointed
            # at this one (latency, accounts) instead.
            extra_env = {
                "GARMIN_AUTH_UPSTREAM_URL": emulator.url,
                "GARMIN_AUTH_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            }
            with (
                out_base(workdir, args.out_base, args.ext4_volume) as outputs,
                sink_database(args.sink_database, clean_environment()) as sink,
                service_stack(workdir, tree=tree, extra_env=extra_env) as (
                    database,
                    credentials,
                    service,
                ),
            ):
                service.start()
                service.wait_serving()
                pinned = cpu_pinning.confine_groups([[service.pid]], args.pin_cpus)
                if pinned:
                    report.note(pinned)
                stack = Stack(
                    workdir=workdir,
                    out_base=outputs,
                    sink_database=sink,
                    database=database,
                    service=service,
                    emulator_url=emulator.url,
                    emulator_pid=child_with_argument(str(users_file)),
                    metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                    worker_env={
                        **worker_environment(credentials, service.target, emulator.url),
                        **tree.environment(),
                    },
                )
                measure_stack(args, report, stack, credentials)
        report.note(f"{load_note()} at the end")


def measure_stack(
    args: argparse.Namespace, report: Report, stack: Stack, credentials: Credentials
) -> None:
    # Nothing is due yet: this run costs the worker's start-up and exit only.
    empty = run_worker(
        stack.worker_env,
        sink_for(stack, "empty"),
        args.concurrency,
        stack.workdir / "worker-empty.log",
        processes=args.worker_processes,
    )
    log(f"logging {args.users} users in through the service (Login RPC)")
    started = time.perf_counter()
    login_everyone(stack.service.target, credentials, args.users)
    report.figure("login_all_users", time.perf_counter() - started, "s")
    stack.database.vacuum_analyze()
    totals = Totals()
    for number in range(1, args.rounds + 1):
        if number > 1:
            make_all_due(stack.database)
        measure_round(args, stack, totals, number)
    report_totals(args, report, totals, empty)
    if args.profile is not None:
        profiled, raw = profile_round(args, stack)
        print_profile(raw, profiled, on_cpu=args.profile_on_cpu)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sync_throughput")
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--activities", type=int, default=ACTIVITIES, help="per user")
    parser.add_argument("--latency", type=float, default=LATENCY_SECONDS, help="seconds")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="measured worker runs")
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=1,
        metavar="K",
        help="K workers at once, --concurrency / K threads each (a CronJob's parallelism)",
    )
    parser.add_argument(
        "--out-base",
        metavar="DIR",
        help="where the worker's --out directories go (default: a temporary directory; "
        "a tmpfs such as /dev/shm takes the disk's fsyncs out)",
    )
    parser.add_argument(
        "--ext4-volume",
        type=int,
        nargs="?",
        const=EXT4_VOLUME_MB,
        metavar="MIB",
        help="the --out directories on a freshly made ext4 filesystem of their own (default "
        f"{EXT4_VOLUME_MB} MiB; needs root): the disk's cost without other writers' "
        "(benchmarks/ext4_volume.py)",
    )
    parser.add_argument(
        "--sink-database",
        action="store_true",
        help="the worker writes to its PostgreSQL sink (a throw-away database) instead of "
        "--out directories",
    )
    parser.add_argument("--quick", action="store_true", help="one round (a smoke run)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="then one more round under py-spy (every thread): raw stacks kept in DIR, and "
        "where the sync threads' time went",
    )
    parser.add_argument(
        "--profile-on-cpu",
        action="store_true",
        help="with --profile: sample only threads that run (where the worker's CPU goes), "
        "not those waiting",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="alternate runs of this revision and the code under test (the working tree, or "
        "--service-revision), each on a fresh stack, and print the ratios of their means",
    )
    parser.add_argument("--pairs", type=int, default=3, help="with --against: how many pairs")
    cpu_pinning.add_argument(parser)
    ServiceTree.add_argument(parser)
    args = parser.parse_args(argv)
    if args.against is not None and args.profile is not None:
        parser.error("--profile profiles one run: leave out --against")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.ext4_volume is not None:
        if args.out_base is not None or args.sink_database:
            parser.error(
                "--ext4-volume is where the --out directories go: leave out "
                "--out-base and --sink-database"
            )
        if (why := ext4_volume.unavailable()) is not None:
            parser.error(why)
    if args.worker_processes < 1 or args.concurrency % args.worker_processes:
        parser.error("--worker-processes must divide --concurrency")
    if args.profile is not None and args.worker_processes > 1:
        parser.error("--profile samples one worker: leave --worker-processes at 1")
    if args.quick:
        args.rounds = 1
    return args


# What --against compares: each run's CPU per user (figures) and the two targets they feed.
_PAIRED_FIGURES = ("worker_cpu_per_user", "server_cpu_per_user", "postgres_cpu_per_user")
_PAIRED_TARGETS = ("sync_cpu_ms_per_user", "sync_wall_vs_ideal")


def run_pairs(args: argparse.Namespace) -> int:
    """`--pairs` pairs of runs, REV (`base`) then the code under test (`test`), each a whole
    run on a fresh stack: on a noisy box both sides of a pair see the same weather."""
    runs: dict[str, list[Report]] = {"base": [], "test": []}
    for index in range(args.pairs):
        for side, revision in (("base", args.against), ("test", args.service_revision)):
            log(f"pair {index + 1} of {args.pairs}: {side}")
            report = Report()
            run(argparse.Namespace(**{**vars(args), "service_revision": revision}), report)
            runs[side].append(report)
    summary = Report()
    for name in (*_PAIRED_FIGURES, *_PAIRED_TARGETS):
        base, test = (
            [{**report.figures, **report.targets}[name] for report in runs[side]]
            for side in ("base", "test")
        )
        summary.note(
            f"{name}: base {', '.join(f'{v:.2f}' for v in base)}; "
            f"test {', '.join(f'{v:.2f}' for v in test)}"
        )
        summary.figure(
            f"{name}_test_vs_base", ratio(statistics.mean(test), statistics.mean(base)), "x"
        )
    summary.log_done()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.against is not None:
        return run_pairs(args)
    return run_reported(run, args)


if __name__ == "__main__":
    sys.exit(main())
