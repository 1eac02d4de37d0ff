"""What this machine charges for waking up: the CPU time of one fixed piece of work done back
to back, and done right after sleeping for a while. Not a figure of the service: the key to
reading the others.

    .venv/bin/python -m benchmarks.cold_wake [--repeats 6]

The work is what a request handler does in miniature: a SHA-256 of 200 KB five times (C code
over memory) and 2,000 iterations of a Python loop (the interpreter). It runs `--repeats`
times after each pause (0, 1 ms, 10 ms, 50 ms, 300 ms, 1.2 s) and prints its mean CPU time
(`time.process_time`) and wall time per pause, and each pause's CPU cost over the back-to-back
one (`cold_wake_cpu_ratio_<pause>`).

On the project's 2-core VM the work cost 1.5x its back-to-back CPU after 50 ms asleep and
~5x after 1.2 s (caches and TLBs cold, the vCPU halted meanwhile). So every figure measured
on threads that wait between bursts of work (the sync worker's 16 threads, each waiting 50 ms
for Garmin per user; the service under a light load) carries that penalty, while a saturated
benchmark (lease_throughput at N = 8, the floor) barely pays it.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Sequence

from benchmarks.harness import Report, ratio, run_reported

PAUSES = (0.0, 0.001, 0.01, 0.05, 0.3, 1.2)
BLOCK = b"x" * 200_000


def work() -> tuple[float, float]:
    """(CPU, wall) seconds of the fixed piece of work."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(5):
        hashlib.sha256(BLOCK).digest()
    total = 0
    for number in range(2000):
        total += number
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(pause: float, repeats: int) -> tuple[float, float]:
    """Mean (CPU, wall) seconds of the work done right after sleeping `pause` seconds."""
    work()  # the first run after a different pause is not this pause's
    runs = []
    for _ in range(repeats):
        time.sleep(pause)
        runs.append(work())
    return statistics.mean(cpu for cpu, _ in runs), statistics.mean(wall for _, wall in runs)


def run(args: argparse.Namespace, report: Report) -> None:
    hot_cpu = 0.0
    for pause in PAUSES:
        cpu, wall = measure(pause, args.repeats)
        name = f"{pause * 1000:g}ms"
        report.figure(f"cold_wake_cpu_after_{name}", cpu * 1000, "ms")
        report.figure(f"cold_wake_wall_after_{name}", wall * 1000, "ms")
        if pause == 0:
            hot_cpu = cpu
        else:
            report.figure(f"cold_wake_cpu_ratio_{name}", ratio(cpu, hot_cpu), "ratio")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cold_wake")
    parser.add_argument("--repeats", type=int, default=6, help="runs of the work per pause")
    args = parser.parse_args(argv)
    return run_reported(run, args)


if __name__ == "__main__":
    sys.exit(main())
