"""Where a lease RPC's CPU and context switches go, thread by thread, and a paired A/B of two
service revisions on the same measure.

    .venv/bin/python -m benchmarks.thread_costs [--workload lease_session] [--in-flight 8]
        [--duration 8] [--service-revision REV] [--against REV] [--pairs 3] [--pin-cpus 0]

Sets up what profile_server does (its serve_for_load: fresh database, 10,000 sessions, the
service as its own process), runs the load for `--duration` seconds after a warm-up and
reads, before and after the window, every thread's CPU time and voluntary/involuntary context
switches from /proc/PID/task. Threads are grouped by their Python name (from `py-spy dump`;
numbered pool threads as one group, e.g. `rpc_N`), or by their kernel name when py-spy is
missing. Prints the rate, the process's CPU and switches per RPC, and each group's.

With `--against REV`, runs `--pairs` pairs alternating REV and the service under test (the
working tree, or `--service-revision`), each on a fresh stack, and prints both sides' figures
per run and the ratios of their means: a shared, noisy box moves both sides alike.
`--pin-cpus`: the service confined to one CPU (benchmarks.cpu_pinning).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import cpu_pinning
from benchmarks.harness import (
    Report,
    ServiceTree,
    Workdir,
    log,
    ratio,
    service_stack,
    venv_script,
)
from benchmarks.load import GRPC_WORKLOADS, run_load
from benchmarks.profile_server import serve_for_load

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SHOWN_CPU_MS = 0.001  # groups that spend less per RPC (idle threads) are not listed
_SWITCHES = re.compile(r"^(voluntary|nonvoluntary)_ctxt_switches:\s+(\d+)$", re.MULTILINE)
_PYSPY_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "([^"]+)"', re.MULTILINE)


@dataclass(frozen=True)
class ThreadCounters:
    """One thread's CPU seconds and context switches so far."""

    cpu: float
    voluntary: int
    involuntary: int


def read_threads(pid: int) -> dict[int, ThreadCounters]:
    """Every live thread of `pid`: its counters, by thread id."""
    counters = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        switches = dict(_SWITCHES.findall(status))
        counters[int(task.name)] = ThreadCounters(
            cpu=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            voluntary=int(switches.get("voluntary", 0)),
            involuntary=int(switches.get("nonvoluntary", 0)),
        )
    return counters


def thread_groups(pid: int) -> dict[int, str]:
    """Thread id -> group name: Python's thread name (pool threads' numbers dropped), or the
    kernel's."""
    names = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[int(task.name)] = (task / "comm").read_text().strip()
        except OSError:
            continue
    try:
        spy = venv_script("py-spy")
    except RuntimeError:  # not installed: the kernel's names only
        spy = None
    if spy is not None:
        dump = subprocess.run(
            [spy, "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        names.update({int(tid): name for tid, name in _PYSPY_THREAD.findall(dump)})
    return {tid: re.sub(r"_\d+$", "_N", name) for tid, name in names.items()}


@dataclass(frozen=True)
class Run:
    """One measured window: the RPC rate, and per group (CPU ms, voluntary, involuntary
    switches) per RPC."""

    rate: float
    groups: dict[str, tuple[float, float, float]]

    def total(self, index: int) -> float:
        return sum(values[index] for values in self.groups.values())


def measure(args: argparse.Namespace, revision: str | None) -> Run:
    with Workdir() as workdir:
        tree = ServiceTree(workdir, revision)
        log(f"thread_costs: service {tree.describe()}")
        with service_stack(workdir, tree=tree) as (database, credentials, service):
            spec = serve_for_load(args, database, credentials, service)
            cpu_pinning.confine_groups([[service.pid]], args.pin_cpus)
            before: dict[int, ThreadCounters] = {}
            result = run_load(spec, lambda: before.update(read_threads(service.pid)))
            after = read_threads(service.pid)
            groups_of = thread_groups(service.pid)
    calls = result.rate * args.duration
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    zero = ThreadCounters(0.0, 0, 0)
    for tid, end in after.items():
        start = before.get(tid, zero)
        group = sums[groups_of.get(tid, "?")]
        group[0] += end.cpu - start.cpu
        group[1] += end.voluntary - start.voluntary
        group[2] += end.involuntary - start.involuntary
    per_rpc = {
        name: (1000 * cpu / calls, voluntary / calls, involuntary / calls)
        for name, (cpu, voluntary, involuntary) in sums.items()
    }
    return Run(result.rate, per_rpc)


def print_run(report: Report, prefix: str, run: Run) -> None:
    report.figure(f"{prefix}_rate", run.rate, "rpc/s")
    report.figure(f"{prefix}_cpu_per_rpc", run.total(0), "ms")
    report.figure(f"{prefix}_voluntary_switches_per_rpc", run.total(1), "switches")
    report.figure(f"{prefix}_involuntary_switches_per_rpc", run.total(2), "switches")
    for name, (cpu, voluntary, involuntary) in sorted(run.groups.items(), key=lambda g: -g[1][0]):
        if cpu >= SHOWN_CPU_MS:
            report.note(
                f"{prefix} {name:24s} cpu {cpu:.3f} ms/rpc, switches {voluntary:.2f} voluntary "
                f"+ {involuntary:.2f} involuntary per rpc"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.thread_costs")
    parser.add_argument("--workload", choices=GRPC_WORKLOADS, default="lease_session")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--against", metavar="REV", help="alternate with this revision")
    parser.add_argument("--pairs", type=int, default=3)
    cpu_pinning.add_argument(parser)
    ServiceTree.add_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    stem = f"{args.workload}_n{args.in_flight}"
    if args.against is None:
        print_run(report, stem, measure(args, args.service_revision))
        return 0
    runs: dict[str, list[Run]] = {"base": [], "test": []}
    for index in range(args.pairs):
        for side, revision in (("base", args.against), ("test", args.service_revision)):
            run = measure(args, revision)
            runs[side].append(run)
            print_run(report, f"{stem}_{side}_{index + 1}", run)
    base_rate = statistics.mean(run.rate for run in runs["base"])
    test_rate = statistics.mean(run.rate for run in runs["test"])
    base_cpu = statistics.mean(run.total(0) for run in runs["base"])
    test_cpu = statistics.mean(run.total(0) for run in runs["test"])
    report.figure(f"{stem}_rate_test_vs_base", ratio(test_rate, base_rate), "x")
    report.figure(f"{stem}_cpu_per_rpc_test_vs_base", ratio(test_cpu, base_cpu), "x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
