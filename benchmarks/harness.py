"""Plumbing shared by the benchmark scripts: result lines, a throw-away PostgreSQL database,
the service and the Garmin emulator as separate processes, CPU and memory readings from /proc,
bulk seeding of sessions, and the exact SQL the lease repository issues.

Every script prints its results on stdout as

    figure <name> <value> <unit>
    target <name> <measured> <goal> PASS|FAIL

(plus `# ...` context lines) and its progress on stderr. Nothing here changes the service:
it is started exactly as an operator starts it (`garmin-auth-service migrate`, then `serve`
with GARMIN_AUTH_* variables).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from auth_service.api.callers import token_sha256
from auth_service.crypto import Keyring
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.models import GarminTokens, OAuth1Token, OAuth2Token, SessionState
from auth_service.storage.audit_repository import SqlAuditRepository
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.lease_repository import SqlLeaseRepository
from auth_service.storage.models import GarminAuthenticationState
from auth_service.storage.secrets import SecretBox
from auth_service.storage.session_repository import SqlSessionRepository

ADMIN_URL_ENV = "BENCH_POSTGRES_URL"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASE_PREFIX = "garmin_auth_bench_"
TABLE = GarminAuthenticationState.__tablename__
CONSUMER_KEY = "bench-consumer-key"
CONSUMER_SECRET = "bench-consumer-secret"  # noqa: S105 - the emulator's benchmark consumer
SERVE_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KB = 1024


def log(message: str) -> None:
    """Progress, on stderr (stdout carries only results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- result lines ------------------------------------------------------------------------


def _number(value: float) -> str:
    if math.isnan(value):  # nothing was measured
        return "nan"
    if float(value).is_integer():
        return str(int(value))
    if abs(value) >= 100:  # noqa: PLR2004 - no decimals past 100
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


@dataclass
class Report:
    """Writes `figure` and `target` lines to stdout and remembers them (a target's measured
    value by its name in `targets`)."""

    figures: dict[str, float] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def figure(self, name: str, value: float, unit: str) -> None:
        self.figures[name] = value
        print(f"figure {name} {_number(value)} {unit}", flush=True)

    def note(self, text: str) -> None:
        for line in text.splitlines():
            print(f"# {line}", flush=True)

    def at_least(self, name: str, measured: float, goal: float) -> bool:
        return self._target(name, measured, f">={_number(goal)}", measured >= goal)

    def at_most(self, name: str, measured: float, goal: float) -> bool:
        return self._target(name, measured, f"<={_number(goal)}", measured <= goal)

    def log_done(self) -> None:
        """The closing progress line: which targets failed, if any."""
        log("done" + (f"; targets failed: {', '.join(self.failed)}" if self.failed else ""))

    def _target(self, name: str, measured: float, goal: str, passed: bool) -> bool:
        self.targets[name] = measured
        if not passed:
            self.failed.append(name)
        verdict = "PASS" if passed else "FAIL"
        print(f"target {name} {_number(measured)} {goal} {verdict}", flush=True)
        return passed


def run_reported(run: Callable[[Any, Report], None], args: Any) -> int:
    """A benchmark's main: `run(args, report)` printing its figures and targets, then the
    line naming the failed targets; the exit status (0: every figure was measured)."""
    report = Report()
    run(args, report)
    report.log_done()
    return 0


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when there is nothing to divide by."""
    return numerator / denominator if denominator else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- /proc readings ----------------------------------------------------------------------


def process_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat.rpartition(")")[2].split()
    # fields[0] is field 3 (state) of proc(5): utime and stime are fields 14 and 15.
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    return sum(process_times(pid))


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of a process."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text(encoding="ascii").splitlines():
                if "_ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def postgres_backend_cpu(database_name: str) -> dict[int, float]:
    """utime + stime of each live PostgreSQL backend connected to `database_name`, by pid.

    Backends are told apart by their process title (`postgres: user db host(port) ...`), so
    other databases on the same server (another team's test run) are not counted.
    """
    marker = f" {database_name} ".encode()
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            title = (entry / "cmdline").read_bytes()
            if title.startswith(b"postgres:") and marker in title:
                cpu[int(entry.name)] = process_cpu_seconds(int(entry.name))
    return cpu


def sessions_opened(database_name: str) -> int:
    """pg_stat_database.sessions of a database on the benchmark server (counts this query's
    own connection too; statistics lag by up to a second)."""
    with psycopg.connect(conninfo_of(admin_url()), autocommit=True) as connection:
        row = connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (database_name,)
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with Path("/proc/stat").open(encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / _CLOCK_TICKS


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    """Resident memory of a process (VmRSS now, or VmHWM for the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * _PAGE_KB
    raise RuntimeError(f"{field_name} not found for pid {pid}")


@dataclass(frozen=True)
class CpuSample:
    """CPU counters at one instant: the service, our database's backends, the machine."""

    wall: float
    server: float
    machine: float
    backends: dict[int, float] = field(default_factory=dict)
    server_system: float = 0.0
    server_switches: int = 0
    # Sessions ever opened to the database (pg_stat_database.sessions, PostgreSQL 14+); in a
    # difference, the connections opened inside the window (the reading's own one removed).
    sessions: int = 0

    @classmethod
    def take(cls, server_pids: Sequence[int] = (), database_name: str = "") -> CpuSample:
        """Counters now; the service's are summed over `server_pids` (its processes)."""
        times = [process_times(pid) for pid in server_pids]
        return cls(
            sessions=sessions_opened(database_name) if database_name else 0,
            wall=time.perf_counter(),
            server=sum(user + system for user, system in times),
            machine=machine_busy_seconds(),
            backends=postgres_backend_cpu(database_name) if database_name else {},
            server_system=sum(system for _user, system in times),
            server_switches=sum(context_switches(pid) for pid in server_pids),
        )

    @property
    def postgres(self) -> float:
        return sum(self.backends.values())

    def until(self, later: CpuSample) -> CpuSample:
        """What was spent between self and `later`. A backend that started in between counts
        from zero; one that ended in between is lost (so PostgreSQL is a lower bound)."""
        return CpuSample(
            wall=later.wall - self.wall,
            server=later.server - self.server,
            machine=later.machine - self.machine,
            backends={
                pid: cpu - self.backends.get(pid, 0.0) for pid, cpu in later.backends.items()
            },
            server_system=later.server_system - self.server_system,
            server_switches=later.server_switches - self.server_switches,
            sessions=max(later.sessions - self.sessions - 1, 0),
        )


# --- processes ---------------------------------------------------------------------------


def venv_script(name: str) -> str:
    """A console script installed beside this interpreter (the venv's bin/)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed beside {sys.executable} nor on PATH")
    return found


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process has a listening socket on (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), Path(table).open(encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_environment() -> dict[str, str]:
    """This process's environment without any GARMIN_AUTH_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM one process we started, then SIGKILL it if it does not end in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class Workdir:
    """A temporary directory for callers files and logs, removed at the end."""

    def __init__(self, prefix: str = "garmin-auth-bench-") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# --- PostgreSQL --------------------------------------------------------------------------


def admin_url() -> str:
    return os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL


def conninfo_of(url: str) -> str:
    """A libpq connection string for a SQLAlchemy postgresql+psycopg URL."""
    parsed = make_url(url)
    parts = {
        "host": parsed.host or "127.0.0.1",
        "port": str(parsed.port or 5432),
        "user": parsed.username or "postgres",
        "dbname": parsed.database or "postgres",
    }
    if parsed.password:
        parts["password"] = str(parsed.password)
    return " ".join(f"{key}={value}" for key, value in parts.items())


class PostgresDatabase:
    """A database with a random name on the benchmark server, dropped on exit."""

    def __init__(self, server_url: str | None = None) -> None:
        self.server_url = server_url or admin_url()
        self.name = DATABASE_PREFIX + uuid.uuid4().hex[:12]
        self.url = (
            make_url(self.server_url).set(database=self.name).render_as_string(hide_password=False)
        )
        self.conninfo = conninfo_of(self.url)

    def __enter__(self) -> Self:
        with psycopg.connect(conninfo_of(self.server_url), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with psycopg.connect(conninfo_of(self.server_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def migrate(self, env: dict[str, str]) -> None:
        """`garmin-auth-service migrate`, as an operator runs it."""
        result = subprocess.run(
            [venv_script("garmin-auth-service"), "migrate"],
            env={**env, "GARMIN_AUTH_DATABASE_URL": self.url},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"migrate failed: {result.stderr.strip()[-2000:]}")

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit (VACUUM works too); rows if it returns any."""
        with psycopg.connect(self.conninfo, autocommit=True) as connection:
            cursor = connection.execute(sql.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def vacuum_analyze(self) -> None:
        self.execute(f"VACUUM (ANALYZE) {TABLE}")

    def bytes_per_session(self) -> tuple[int, int]:
        """(pg_total_relation_size of the sessions table, its row count)."""
        rows = self.execute(f"SELECT pg_total_relation_size('{TABLE}'), count(*) FROM {TABLE}")
        return int(rows[0][0]), int(rows[0][1])


# --- which code the service (and the worker) runs --------------------------------------

REPOSITORY = Path(__file__).resolve().parent.parent
# Installed package name -> its directory in a source tree (pyproject's package-dir): what the
# service and the sync worker run. garmin_emulator stays the working tree's (it stands for
# Garmin, which does not change between the two sides of an A/B).
_PACKAGE_DIRS = {
    "auth_service": "auth_service",
    "garmin_auth": "protos/garmin_auth",
    "auth_service_migrations": "migrations",
    "garmin_client": "garmin_client",
    "sync_worker": "sync_worker",
}


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPOSITORY), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


class ServiceTree:
    """The code `garmin-auth-service` (and `garmin-sync-worker`) runs: the installed
    (editable, working) tree by default, or a git revision exported (`git archive`, read-only)
    into `workdir` and put first on the process's PYTHONPATH, so a run can measure a fixed
    commit while the tree is being edited. A package the revision does not have yet is taken
    from the working tree."""

    def __init__(self, workdir: Path, revision: str | None = None) -> None:
        self.revision = revision
        self.pythonpath: str | None = None
        if revision is None:
            return
        commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
        source = workdir / f"source-{commit[:12]}"
        source.mkdir()
        present = set(_git("ls-tree", "--name-only", commit, "--", *_PACKAGE_DIRS.values()).split())
        packages = {
            package: directory
            for package, directory in _PACKAGE_DIRS.items()
            if directory in present
        }
        archive = subprocess.run(
            ["git", "-C", str(REPOSITORY), "archive", commit, *set(packages.values())],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True, timeout=60)
        shim = workdir / f"pythonpath-{commit[:12]}"
        shim.mkdir()
        for package, directory in packages.items():
            (shim / package).symlink_to(source / directory)
        self.pythonpath = str(shim)
        self.revision = commit

    def environment(self) -> dict[str, str]:
        return {} if self.pythonpath is None else {"PYTHONPATH": self.pythonpath}

    @staticmethod
    def add_argument(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--service-revision",
            metavar="REV",
            help="run the service (and sync_throughput's worker) from this git revision (e.g. "
            "HEAD) instead of the working tree",
        )

    def describe(self) -> str:
        if self.revision is not None:
            return f"git {self.revision[:12]} (exported)"
        head = _git("rev-parse", "--short=12", "HEAD")
        changed = _git("status", "--porcelain", "--", *set(_PACKAGE_DIRS.values()))
        count = len(changed.splitlines())
        return f"working tree at {head}" + (
            f" with {count} uncommitted change(s) in the service's or worker's code"
            if count
            else ""
        )


# --- credentials and the service ---------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Credentials:
    """A fresh encryption key and caller tokens, shared by the service and the load."""

    keyring_value: str
    worker_token: str
    admin_token: str
    callers_file: Path

    @classmethod
    def create(cls, workdir: Path, worker_role: str = "worker") -> Credentials:
        """`worker_role` "worker_full" for a load that reports refreshed sessions itself
        (the legacy workers' ReportRefreshed)."""
        worker, admin = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        path = workdir / "callers.toml"
        path.write_text(
            f'[[callers]]\nname = "bench-worker"\ntoken_sha256 = "{token_sha256(worker)}"\n'
            f'roles = ["{worker_role}"]\n\n'
            f'[[callers]]\nname = "bench-admin"\ntoken_sha256 = "{token_sha256(admin)}"\n'
            'roles = ["admin"]\n',
            encoding="utf-8",
        )
        return cls(Keyring.generate_key_value("bench"), worker, admin, path)

    @property
    def keyring(self) -> Keyring:
        return Keyring.parse(self.keyring_value)

    def worker_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.worker_token}"),)


def service_environment(
    database: PostgresDatabase,
    credentials: Credentials,
    *,
    upstream_url: str,
    port: int,
    tree: ServiceTree | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment `garmin-auth-service serve` reads, on top of a clean one."""
    return {
        **clean_environment(),
        **(tree.environment() if tree is not None else {}),
        "GARMIN_AUTH_DATABASE_URL": database.url,
        "GARMIN_AUTH_LISTEN": f"127.0.0.1:{port}",
        "GARMIN_AUTH_HEALTH_LISTEN": "off",
        "GARMIN_AUTH_ENCRYPTION_KEYS": credentials.keyring_value,
        "GARMIN_AUTH_CALLERS_FILE": str(credentials.callers_file),
        "GARMIN_AUTH_OAUTH_CONSUMER_KEY": CONSUMER_KEY,
        "GARMIN_AUTH_OAUTH_CONSUMER_SECRET": CONSUMER_SECRET,
        # Nothing may reach the real Garmin, even if a token were due for a refresh.
        "GARMIN_AUTH_UPSTREAM_URL": upstream_url,
        "GARMIN_AUTH_GRACE_PERIOD": "1",
        **(extra or {}),
    }


class EmulatorProcess:
    """`python -m garmin_emulator` in its own process; `url` once started."""

    def __init__(self, log_path: Path, extra_args: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        with self.log_path.open("w", encoding="utf-8") as log_file:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "garmin_emulator",
                    "--port",
                    "0",
                    "--consumer-key",
                    CONSUMER_KEY,
                    "--consumer-secret",
                    CONSUMER_SECRET,
                    *self.extra_args,
                ],
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env=clean_environment(),
            )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], SERVE_TIMEOUT_SECONDS)
        line = self._process.stdout.readline().strip() if ready else ""
        if not line.startswith("http://"):
            stop_process(self._process)
            raise RuntimeError(f"the emulator did not start (see {self.log_path})")
        self.url = line
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            stop_process(self._process)
            if self._process.stdout is not None:
                self._process.stdout.close()


def health_status(channel: grpc.Channel, timeout: float = 0.5) -> int | None:
    """The readiness status (the database answers), or None when the server does not answer
    yet."""
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=timeout, wait_for_ready=True
        )
    except grpc.RpcError:
        return None
    return int(answer.status)


# Reconnect quickly while the server starts, so the start-up time is not the channel's backoff.
FAST_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 5),
    ("grpc.min_reconnect_backoff_ms", 5),
    ("grpc.max_reconnect_backoff_ms", 20),
]


class ServiceProcess:
    """`garmin-auth-service serve` as a separate process, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.target = env["GARMIN_AUTH_LISTEN"]
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the service is not started")
        return self._process.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.started_at = time.perf_counter()
            self._process = subprocess.Popen(
                [venv_script("garmin-auth-service"), "serve"],
                env=self.env,
                stdout=log_file,
                stderr=log_file,
            )

    def wait_serving(self, timeout: float = SERVE_TIMEOUT_SECONDS) -> float:
        """Seconds from process start until health answers SERVING."""
        deadline = time.perf_counter() + timeout
        with grpc.insecure_channel(self.target, options=FAST_RECONNECT_OPTIONS) as channel:
            while time.perf_counter() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(f"the service exited early; see {self.log_path}")
                if health_status(channel, 0.2) == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - self.started_at
                time.sleep(0.005)
        raise RuntimeError(f"the service was not SERVING after {timeout} s; see {self.log_path}")

    def wait_listening(self, timeout: float = SERVE_TIMEOUT_SECONDS) -> float:
        """Seconds from process start until THIS process listens on the port (for a second
        process sharing the port through SO_REUSEPORT, where health may answer from the
        first)."""
        port = int(self.target.rpartition(":")[2])
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"the service exited early; see {self.log_path}")
            if port in listening_ports(self.pid):
                return time.perf_counter() - self.started_at
            time.sleep(0.01)
        raise RuntimeError(f"the service did not listen after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)

    def __enter__(self) -> Self:
        self.start()
        self.wait_serving()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def service_stack(
    workdir: Path, *, tree: ServiceTree | None = None, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[PostgresDatabase, Credentials, ServiceProcess]]:
    """A fresh migrated database, the emulator and a SERVING service; all gone afterwards.

    The service is started once the caller's block begins, so seed first and then call
    `service.start(); service.wait_serving()`; this context only stops it.
    """
    credentials = Credentials.create(workdir)
    with (
        PostgresDatabase() as database,
        EmulatorProcess(workdir / "emulator.log") as emulator,
    ):
        env = service_environment(
            database,
            credentials,
            upstream_url=emulator.url,
            port=free_port(),
            tree=tree,
            extra=extra_env,
        )
        database.migrate(env)
        service = ServiceProcess(env, workdir / "service.log")
        try:
            yield database, credentials, service
        finally:
            service.stop()


# --- seeding -----------------------------------------------------------------------------


def user_id(index: int) -> str:
    return f"bench-user-{index:07d}"


def _token(length: int) -> str:
    return secrets.token_urlsafe(length)[:length]


def bench_tokens(expires_at: datetime) -> GarminTokens:
    """Tokens shaped like garth's (a ~1 kB JWT-sized access token), expiring at `expires_at`."""
    return GarminTokens(
        oauth1=OAuth1Token(oauth_token=_token(36), oauth_token_secret=_token(27)),
        oauth2=OAuth2Token(
            scope="COMMUNITY_COURSE_READ GARMINPAY_WRITE CONNECT_READ CONNECT_WRITE",
            jti=str(uuid.uuid4()),
            token_type="Bearer",  # noqa: S106 - the OAuth2 token type, not a secret
            access_token="eyJ" + _token(1000),
            refresh_token="eyJ" + _token(400),
            expires_at=expires_at,
            refresh_token_expires_at=expires_at,
        ),
    )


SEED_COLUMNS = (
    "user_id",
    "state",
    "session_ciphertext",
    "session_version",
    "access_token_expires_at",
    "fencing_token",
    "last_validated_at",
    "last_synced_at",
    "synced_through",
    "last_sync_attempt_at",
    "created_at",
    "updated_at",
)


def seed_sessions(
    database: PostgresDatabase,
    keyring: Keyring,
    indexes: Iterable[int],
    last_synced_at: Callable[[int], datetime | None],
    *,
    now: datetime | None = None,
) -> int:
    """COPY one ACTIVE session per index into the table; returns how many.

    Each row carries its own AES-256-GCM blob sealed for that user (SecretBox, the service's
    key), whose OAuth2 token expires in ten years, so no lease ever needs a central refresh.
    `last_synced_at(i)` decides which sessions LeaseNextSession finds due.
    """
    box = SecretBox(keyring)
    now = now or datetime.now(UTC)
    expires = now + timedelta(days=3650)
    count = 0
    columns = ", ".join(SEED_COLUMNS)
    with (
        psycopg.connect(database.conninfo) as connection,
        connection.cursor() as cursor,
        cursor.copy(f"COPY {TABLE} ({columns}) FROM STDIN".encode()) as copy,
    ):
        for index in indexes:
            uid = user_id(index)
            synced = last_synced_at(index)
            copy.write_row(
                (
                    uid,
                    SessionState.ACTIVE.value,
                    box.seal_tokens(uid, 1, bench_tokens(expires)),
                    1,
                    expires,
                    0,
                    now,
                    synced,
                    synced,
                    synced,
                    now - timedelta(days=30),
                    now,
                )
            )
            count += 1
    return count


def seed_due_sessions(database: PostgresDatabase, keyring: Keyring, users: int) -> None:
    """`users` sessions last synced two hours ago (spread over an hour, so every one is due
    and LeaseNextSession takes them oldest first), then VACUUM ANALYZE: the lease
    benchmarks' starting point."""
    now = datetime.now(UTC)
    seed_sessions(
        database,
        keyring,
        range(users),
        lambda i: now - timedelta(hours=2, seconds=i % 3600),
        now=now,
    )
    database.vacuum_analyze()


def blob_size(keyring: Keyring) -> int:
    """Bytes of one seeded session blob."""
    expires = datetime.now(UTC) + timedelta(days=3650)
    return len(SecretBox(keyring).seal_tokens(user_id(0), 1, bench_tokens(expires)))


# --- the repository's SQL ----------------------------------------------------------------


@dataclass(frozen=True)
class CapturedStatement:
    """SQL text and parameters as the service's engine sent them to psycopg."""

    sql: str
    params: dict[str, Any]

    def bind(self, replacements: dict[Any, Any]) -> dict[str, Any]:
        """The parameters with every sentinel value swapped for a real one."""
        return {
            key: replacements.get(value, value) if _hashable(value) else value
            for key, value in self.params.items()
        }


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


# Sentinels handed to the repository when capturing; bind() swaps them per call.
SENTINEL_USER = "bench-sentinel-user"
SENTINEL_LEASE = "bench-sentinel-lease"
SENTINEL_HOLDER = "bench-sentinel-holder"
SENTINEL_NOW = datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=UTC)
SENTINEL_EXPIRES = datetime(2001, 2, 3, 4, 5, 6, 8, tzinfo=UTC)
SENTINEL_SYNCED = datetime(2001, 2, 3, 4, 5, 6, 9, tzinfo=UTC)
SENTINEL_DUE = datetime(2001, 2, 3, 4, 5, 6, 10, tzinfo=UTC)


@dataclass(frozen=True)
class LeaseStatements:
    """The repository's grant, grant_next and release statements."""

    grant: CapturedStatement
    grant_next: CapturedStatement
    release: CapturedStatement


@functools.cache
def _throwaway_box() -> SecretBox:
    return SecretBox(Keyring.parse(Keyring.generate_key_value("bench")))


def lease_repository(session: Session) -> SqlLeaseRepository:
    """The service's lease repository on `session` (grants and releases seal nothing, so a
    throwaway key serves; made once, as the service's is: parsing a key ring per unit of
    work would add its own CPU to every statement measured)."""
    box = _throwaway_box()
    return SqlLeaseRepository(
        session, SqlSessionRepository(session, box), SqlAuditRepository(session)
    )


def capture_lease_statements(database_url: str) -> LeaseStatements:
    """Run SqlLeaseRepository.grant/grant_next/release once each (rolled back) and record the
    statement each sent, so a baseline can issue exactly the service's SQL: each with the
    audit event and change-log entry it writes, as the RPCs call them."""
    engine = create_engine_for(database_url)
    captured: list[CapturedStatement] = []

    def record(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        # The grants lock their candidate in a CTE: "WITH candidate AS (...) UPDATE ...".
        if statement.lstrip().upper().startswith(("UPDATE", "WITH")):
            captured.append(CapturedStatement(statement, dict(parameters or {})))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with session_factory(engine)() as session:
            repository = lease_repository(session)
            repository.grant(
                SENTINEL_USER,
                lease_digest=SENTINEL_LEASE,
                holder=SENTINEL_HOLDER,
                caller=SENTINEL_HOLDER,
                now=SENTINEL_NOW,
                expires_at=SENTINEL_EXPIRES,
                record_as=AuditedRpc.LEASE_SESSION,
            )
            repository.grant_next(
                lease_digest=SENTINEL_LEASE,
                holder=SENTINEL_HOLDER,
                caller=SENTINEL_HOLDER,
                now=SENTINEL_NOW,
                expires_at=SENTINEL_EXPIRES,
                due_before=SENTINEL_DUE,
                record_as=AuditedRpc.LEASE_NEXT_SESSION,
            )
            repository.release(
                SENTINEL_LEASE,
                caller=SENTINEL_HOLDER,
                now=SENTINEL_NOW,
                synced_through=SENTINEL_SYNCED,
                record_as=AuditedRpc.RELEASE_LEASE,
            )
            session.rollback()
    finally:
        engine.dispose()
    if len(captured) != 3:  # noqa: PLR2004 - grant, grant_next, release
        raise RuntimeError(f"expected 3 UPDATE statements, captured {len(captured)}")
    return LeaseStatements(grant=captured[0], grant_next=captured[1], release=captured[2])
