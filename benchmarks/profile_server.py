"""Where the service's time goes under lease load: py-spy on the separate server process.

    .venv/bin/python -m benchmarks.profile_server [--workload lease_session] [--in-flight 32]
        [--duration 20] [--out DIR] [--all-threads]

Sets up what lease_throughput does (fresh database, 10,000 sessions, the service as its own
process), runs one workload from a load process and, during the measured window, samples the
server with `py-spy record --gil` (only the thread holding the GIL: where the Python core
goes; `--all-threads` samples every non-idle thread instead, I/O waits included). It keeps
the raw collapsed stacks and a flame graph in DIR and prints a summary: the share of wall
time the GIL was held, time by layer (each sample charged to the innermost frame of a known
layer), the top functions by self time and by inclusive time. For a flame graph, feed the raw
file to flamegraph.pl or speedscope, or run `py-spy record -o profile.svg --pid <pid>`.

py-spy must be installed in the venv (`.venv/bin/pip install py-spy`) and allowed to ptrace
(root, or CAP_SYS_PTRACE). Profiling slows the server a little: take figures from
lease_throughput, shares from here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.harness import (
    TABLE,
    Credentials,
    PostgresDatabase,
    Report,
    ServiceProcess,
    ServiceTree,
    Workdir,
    log,
    seed_due_sessions,
    service_stack,
    venv_script,
)
from benchmarks.load import GRPC_WORKLOADS, LoadSpec, measure, run_load

USERS = 10_000
SAMPLE_RATE = 400
TOP = 20

# Layers, matched against a frame's file path; the innermost matching frame of a sample wins.
LAYERS: tuple[tuple[str, str], ...] = (
    ("psycopg (driver: protocol, I/O waits, row decoding)", "psycopg/"),
    ("sqlalchemy pool (checkout, ping after idling, return)", "sqlalchemy/pool/"),
    ("sqlalchemy orm (ORM-enabled UPDATE ... RETURNING, row loading)", "sqlalchemy/orm/"),
    ("sqlalchemy core (compile cache, execution context, result)", "sqlalchemy/"),
    ("logging (stdlib + JSON formatter + redaction)", "logging/"),
    ("logging (stdlib + JSON formatter + redaction)", "garmin_client/logging_setup.py"),
    ("json", "json/"),
    ("crypto (AES-GCM, key ring)", "cryptography/"),
    ("crypto (AES-GCM, key ring)", "auth_service/crypto.py"),
    ("token (de)serialisation", "auth_service/storage/secrets.py"),
    ("protobuf conversion", "auth_service/api/convert.py"),
    ("protobuf conversion", "google/protobuf/"),
    ("interceptor + callers", "auth_service/api/interceptor.py"),
    ("interceptor + callers", "auth_service/api/callers.py"),
    ("metrics (prometheus_client)", "prometheus_client/"),
    ("metrics (prometheus_client)", "auth_service/metrics/"),
    ("service code (domain, repository, views, servicer)", "auth_service/"),
    ("grpc server (python part)", "grpc/"),
    ("grpc server (python part)", "grpc_health/"),
    ("thread pool (futures, locks, conditions)", "threading.py"),
    ("thread pool (futures, locks, conditions)", "concurrent/"),
    ("thread pool (futures, locks, conditions)", "queue.py"),
)

# Operations worth a line of their own: (what, substring of a frame's "function (file)" label,
# and optionally a substring that must NOT be in the stack). Inclusive: a sample counts once
# for an operation if a frame of its stack matches.
OPERATIONS: tuple[tuple[str, str] | tuple[str, str, str], ...] = (
    ("pool checkout (incl. the ping after idling)", "_ConnectionFairy._checkout"),
    ("  of which the ping", "do_ping"),
    ("pool checkin (return, reset/rollback)", "_finalize_fairy"),
    ("COMMIT", "RootTransaction._do_commit"),
    ("new PostgreSQL connection (pool churn)", "_ConnectionRecord.__connect"),
    ("grant statement, with its audit event and change-log entry", "LeaseRepository._granted"),
    ("renew/release statement, with its trail", "LeaseRepository._holder_call"),
    (
        "LeaseRepository.find: the row read before a grant (and after a refusal)",
        "Repository.find (",
    ),
    ("other audit events and change-log entries (before COMMIT)", "write_trail"),
    ("change-log sequencer (background)", "ChangeSequencer._loop"),
    ("metrics", "auth_service/metrics/"),
    ("open tokens (AES-GCM + JSON)", "SecretBox.open_tokens"),
    ("response protobufs", "api/convert.py"),
    ("per-RPC log line", "Logger.info"),
    ("caller authentication", "CallerRegistry.authenticate"),
    ("input validation", "auth_service/domain/validation.py"),
    ("lease id (secrets.token_urlsafe)", "new_lease_id"),
)

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    function: str
    file: str

    @property
    def label(self) -> str:
        path = self.file
        for marker in ("site-packages/", "/lib/python3", "/work/main/"):
            if marker in path:
                path = path.split(marker, 1)[1]
        return f"{self.function} ({path})"


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text.strip())
    if match is None:
        return Frame(text.strip(), "")
    return Frame(match["function"], match["file"])


def layer_of(stack: Sequence[Frame]) -> str:
    for frame in reversed(stack):
        for name, marker in LAYERS:
            if marker in frame.file:
                return name
    return "other"


@dataclass
class Profile:
    samples: int
    by_layer: Counter[str]
    self_time: Counter[str]
    inclusive: Counter[str]
    operations: Counter[str]


def read_collapsed(path: Path) -> Profile:
    """py-spy's raw format: `frame;frame;...;leaf count` per line (root first)."""
    by_layer: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    operations: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(part) for part in stack_text.split(";")]
        # py-spy puts the thread (and process) name first when asked to; keep code frames.
        frames = [frame for frame in frames if frame.file] or frames
        total += count
        by_layer[layer_of(frames)] += count
        self_time[frames[-1].label] += count
        labels = {frame.label for frame in frames}
        for label in labels:
            inclusive[label] += count
        for what, pattern, *unless in OPERATIONS:
            if any(pattern in label for label in labels) and not any(
                excluded in label for excluded in unless for label in labels
            ):
                operations[what] += count
    return Profile(total, by_layer, self_time, inclusive, operations)


def print_profile(profile: Profile, wall_seconds: float, rate: int, gil_only: bool) -> None:
    total = max(profile.samples, 1)
    if gil_only:
        held = profile.samples / (wall_seconds * rate) if wall_seconds else float("nan")
        print(f"# GIL held {held:.0%} of the window ({profile.samples} samples at {rate} Hz)")
    else:
        print(f"# {profile.samples} samples of non-idle threads at {rate} Hz")
    print("# time by layer (innermost known frame):")
    for name, count in profile.by_layer.most_common():
        print(f"#   {count / total:6.1%}  {name}")
    print("# selected operations (inclusive):")
    for what, *_patterns in OPERATIONS:
        print(f"#   {profile.operations[what] / total:6.1%}  {what}")
    print(f"# top {TOP} functions by self time:")
    for label, count in profile.self_time.most_common(TOP):
        print(f"#   {count / total:6.1%}  {label}")
    print(f"# top {TOP} functions by inclusive time:")
    for label, count in profile.inclusive.most_common(TOP):
        print(f"#   {count / total:6.1%}  {label}")


def py_spy(pid: int, out: Path, duration: float, *, gil_only: bool) -> list[str]:
    command = [
        venv_script("py-spy"),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(SAMPLE_RATE),
        "--duration",
        str(max(1, round(duration))),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    return [*command, "--gil"] if gil_only else command


def run(args: argparse.Namespace) -> None:
    report = Report()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.workload}_n{args.in_flight}"
    raw = out / f"{stem}.collapsed.txt"
    with Workdir() as workdir:
        tree = ServiceTree(workdir, args.service_revision)
        report.note(f"service code: {tree.describe()}")
        with service_stack(workdir, tree=tree) as stack:
            rate, profiled = profile_stack(args, report, raw, *stack)
    report.figure(f"{stem}_rate", rate, "rpc/s")
    report.figure(f"{stem}_rate_under_profiler", profiled, "rpc/s")
    print_profile(read_collapsed(raw), args.duration, SAMPLE_RATE, not args.all_threads)
    report.note(f"raw stacks (flamegraph.pl / speedscope input): {raw}")


def serve_for_load(
    args: argparse.Namespace,
    database: PostgresDatabase,
    credentials: Credentials,
    service: ServiceProcess,
) -> LoadSpec:
    """USERS due sessions seeded, the service SERVING: the load `args` ask for (workload,
    in-flight callers, duration) against it."""
    seed_due_sessions(database, credentials.keyring, USERS)
    service.start()
    service.wait_serving()
    return LoadSpec(
        workload=args.workload,
        in_flight=args.in_flight,
        duration=args.duration,
        warmup=2.0,
        target=service.target,
        metadata=credentials.worker_metadata(),
        user_count=USERS,
    )


def profile_stack(
    args: argparse.Namespace,
    report: Report,
    raw: Path,
    database: PostgresDatabase,
    credentials: Credentials,
    service: ServiceProcess,
) -> tuple[float, float]:
    """One window without the profiler, then one with it; the two rates."""
    stem = f"{args.workload}_n{args.in_flight}"
    spec = serve_for_load(args, database, credentials, service)
    log(f"{stem}: {args.duration:g} s without the profiler")
    plain = measure(spec, [service.pid], database.name)
    report.figure(f"{stem}_server_cpu_per_rpc", plain.per_call_ms(plain.cpu.server), "ms")
    if args.workload == "lease_next":
        database.execute(
            f"UPDATE {TABLE} SET last_sync_attempt_at = NULL, "
            "last_synced_at = now() - interval '2 hours'"
        )
    log(f"{stem}: {args.duration:g} s with py-spy attached")
    profiled = profile_window(
        replace(spec, first_user=plain.result.next_user), service.pid, raw, args
    )
    return plain.result.rate, profiled


def profile_window(spec: LoadSpec, pid: int, raw: Path, args: argparse.Namespace) -> float:
    """Run the load while py-spy samples the server for the window (raw collapsed stacks)."""
    spies: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        command = py_spy(pid, raw, args.duration, gil_only=not args.all_threads)
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    result = run_load(spec, start)
    for spy in spies:
        _, errors = spy.communicate(timeout=args.duration + 30)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace').strip()}")
    return result.rate


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_server")
    parser.add_argument("--workload", choices=GRPC_WORKLOADS, default="lease_session")
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "garmin-auth-profiles"))
    parser.add_argument("--all-threads", action="store_true", help="not only the GIL holder")
    parser.add_argument("--quick", action="store_true", help="5 s of sampling")
    parser.add_argument("--summarize", metavar="FILE", help="only summarise a raw py-spy file")
    ServiceTree.add_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 5.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        print_profile(read_collapsed(Path(args.summarize)), args.duration, SAMPLE_RATE, False)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
