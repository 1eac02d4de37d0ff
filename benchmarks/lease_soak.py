"""The soak mode of lease_throughput (`--soak-minutes M`): is the service's latency flat over
a long run at a load it can carry?

First the capacity: workers lease in a closed loop (benchmarks.lease_loop: LeaseNextSession
with min_sync_interval 0, then ReleaseLease) with CAPACITY_IN_FLIGHT callers for `capacity`
seconds after a warm-up; the cycles completed per second are the capacity. Then the same
cycles in an open loop at SOAK_LOAD of that rate for M minutes (SOAK_IN_FLIGHT callers on a
fixed schedule, so a slower service does not lower the offered load). The p99 of every RPC
that ended in the first minute is compared with the last minute's (windows of M/3 when M < 3).

Target: soak_p99_last_vs_first <= 1.2. Figures: capacity, offered and achieved rates, p99 per
minute, errors, the service's CPU per cycle and its RSS at the start and the end (a leak shows
as growth).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks.harness import Report, log, percentile, process_cpu_seconds, ratio, rss_bytes
from benchmarks.lease_loop import LeaseLoop, LoopResult

SOAK_LOAD = 0.8
SOAK_P99_GOAL = 1.2
CAPACITY_IN_FLIGHT = 32
# Enough callers that the paced load never waits for a free one.
SOAK_IN_FLIGHT = 32
WARMUP_SECONDS = 2.0
MINUTE = 60.0
MB = 1_000_000
METHODS = ("LeaseNextSession", "ReleaseLease")


def _latencies(result: LoopResult, start: float, end: float) -> list[float]:
    return [ms for method in METHODS for ms in result.latencies_ms(method, start, end)]


def _cycles(result: LoopResult, start: float, end: float) -> int:
    return len(result.latencies_ms("ReleaseLease", start, end))


def measure_capacity(
    targets: Sequence[str], metadata: tuple[tuple[str, str], ...], seconds: float
) -> float:
    """Closed-loop cycles per second with CAPACITY_IN_FLIGHT callers."""
    with LeaseLoop(targets, metadata, CAPACITY_IN_FLIGHT) as loop:
        opened = time.time() + WARMUP_SECONDS
        time.sleep(WARMUP_SECONDS + seconds)
        closed = time.time()
        result = loop.stop()
    return _cycles(result, opened, closed) / (closed - opened)


def run_soak(
    report: Report,
    targets: Sequence[str],
    metadata: tuple[tuple[str, str], ...],
    server_pids: Sequence[int],
    *,
    minutes: float,
    capacity_seconds: float,
) -> None:
    log(f"soak: measuring capacity ({CAPACITY_IN_FLIGHT} callers, closed loop)")
    capacity = measure_capacity(targets, metadata, capacity_seconds)
    offered = SOAK_LOAD * capacity
    report.figure("soak_capacity", capacity, "cycles/s")
    report.figure("soak_offered", offered, "cycles/s")
    log(f"soak: {minutes:g} min at {offered:.0f} cycles/s ({SOAK_LOAD:.0%} of {capacity:.0f})")
    rss_start = sum(rss_bytes(pid) for pid in server_pids)
    cpu_start = sum(process_cpu_seconds(pid) for pid in server_pids)
    with LeaseLoop(targets, metadata, SOAK_IN_FLIGHT, rate=offered) as loop:
        begin = time.time() + 0.5  # the schedule's first start
        time.sleep(0.5 + minutes * MINUTE)
        end = time.time()
        cpu_end = sum(process_cpu_seconds(pid) for pid in server_pids)
        rss_end = sum(rss_bytes(pid) for pid in server_pids)
        result = loop.stop()
    cycles = _cycles(result, begin, end)
    report.figure("soak_minutes", (end - begin) / MINUTE, "min")
    report.figure("soak_achieved", cycles / (end - begin), "cycles/s")
    report.figure("soak_errors", sum(result.errors.values()), "calls")
    report.figure("soak_server_cpu_per_cycle", 1000 * ratio(cpu_end - cpu_start, cycles), "ms")
    report.figure("soak_server_rss_start", rss_start / MB, "MB")
    report.figure("soak_server_rss_end", rss_end / MB, "MB")
    window = min(MINUTE, (end - begin) / 3)
    slices = max(int((end - begin) // window), 1)
    for index in range(slices):
        start = begin + index * window
        latencies = _latencies(result, start, start + window)
        report.figure(f"soak_p99_window_{index + 1}", percentile(latencies, 99), "ms")
    first = percentile(_latencies(result, begin, begin + window), 99)
    last = percentile(_latencies(result, end - window, end), 99)
    report.figure("soak_window", window, "s")
    report.figure("soak_p50_first", percentile(_latencies(result, begin, begin + window), 50), "ms")
    report.figure("soak_p50_last", percentile(_latencies(result, end - window, end), 50), "ms")
    for what, count in sorted(result.errors.items()):
        report.note(f"soak: {count} x {what}")
    report.at_most("soak_p99_last_vs_first", ratio(last, first), SOAK_P99_GOAL)
