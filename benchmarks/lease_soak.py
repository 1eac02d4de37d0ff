"""The soak mode of lease_throughput (`--soak-minutes M`): is the service's latency flat over
a long run at a load it can carry?

First the capacity: workers lease in a closed loop (benchmarks.lease_loop: LeaseNextSession
with min_sync_interval 0, then ReleaseLease) with CAPACITY_IN_FLIGHT callers for `capacity`
seconds after a warm-up; the cycles completed per second are the capacity. Then the same
cycles in an open loop at SOAK_LOAD of that rate for M minutes (SOAK_IN_FLIGHT callers on a
fixed schedule, so a slower service does not lower the offered load). The p99 of every RPC
that ended in the first minute is compared with the last minute's (windows of M/3 when M < 3).

The database is vacuumed as a production server's autovacuum daemon would (this box's server
runs without it: benchmarks.autovacuum). Target: soak_p99_last_vs_first <= 1.2. Figures:
capacity, offered and achieved rates, p99 per minute, errors, the service's CPU per cycle and
its RSS at the start and the end (a leak shows as growth), and the stand-in's vacuums.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks.autovacuum import AutovacuumStandIn
from benchmarks.harness import (
    CpuSample,
    PostgresDatabase,
    Report,
    log,
    percentile,
    ratio,
    rss_bytes,
)
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
    database: PostgresDatabase,
    minutes: float,
    capacity_seconds: float,
) -> None:
    # Dead row versions pile up at this load: vacuumed as a production server's daemon would.
    with AutovacuumStandIn(database.conninfo) as autovacuum:
        _soak(report, targets, metadata, server_pids, database.name, minutes, capacity_seconds)
    report.figure("soak_server_autovacuum", int(autovacuum.work.server_autovacuum), "(1 = on)")
    report.figure("soak_stand_in_vacuums", autovacuum.work.vacuums, "vacuums")
    report.figure("soak_stand_in_analyzes", autovacuum.work.analyzes, "analyzes")


def _soak(
    report: Report,
    targets: Sequence[str],
    metadata: tuple[tuple[str, str], ...],
    server_pids: Sequence[int],
    database_name: str,
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
    window = min(MINUTE, minutes * MINUTE / 3)
    slices = max(round(minutes * MINUTE / window), 1)
    with LeaseLoop(targets, metadata, SOAK_IN_FLIGHT, rate=offered) as loop:
        begin = time.time() + 0.5  # the schedule's first start
        # CPU at every window's edge: where a growing latency comes from (the service, or
        # PostgreSQL, or the rest of the machine).
        samples = []
        for index in range(slices + 1):
            time.sleep(max(begin + index * window - time.time(), 0.0))
            samples.append(CpuSample.take(server_pids, database_name))
        end = time.time()
        rss_end = sum(rss_bytes(pid) for pid in server_pids)
        result = loop.stop()
    cycles = _cycles(result, begin, end)
    report.figure("soak_minutes", (end - begin) / MINUTE, "min")
    report.figure("soak_achieved", cycles / (end - begin), "cycles/s")
    report.figure("soak_errors", sum(result.errors.values()), "calls")
    spent = samples[0].until(samples[-1])
    report.figure("soak_server_cpu_per_cycle", 1000 * ratio(spent.server, cycles), "ms")
    report.figure("soak_server_rss_start", rss_start / MB, "MB")
    report.figure("soak_server_rss_end", rss_end / MB, "MB")
    report.figure("soak_window", window, "s")
    for index in range(slices):
        start = begin + index * window
        latencies = _latencies(result, start, start + window)
        in_window = samples[index].until(samples[index + 1])
        done = _cycles(result, start, start + window)
        name = f"soak_window_{index + 1}"
        report.figure(f"{name}_p99", percentile(latencies, 99), "ms")
        report.figure(f"{name}_p50", percentile(latencies, 50), "ms")
        report.figure(f"{name}_cycles_per_s", done / window, "cycles/s")
        report.figure(f"{name}_server_cpu", 1000 * ratio(in_window.server, done), "ms/cycle")
        report.figure(f"{name}_postgres_cpu", 1000 * ratio(in_window.postgres, done), "ms/cycle")
        report.figure(f"{name}_machine_busy", in_window.machine / in_window.wall, "cores")
    first = percentile(_latencies(result, begin, begin + window), 99)
    last = percentile(_latencies(result, end - window, end), 99)
    report.figure("soak_p50_first", percentile(_latencies(result, begin, begin + window), 50), "ms")
    report.figure("soak_p50_last", percentile(_latencies(result, end - window, end), 50), "ms")
    for what, count in sorted(result.errors.items()):
        report.note(f"soak: {count} x {what}")
    report.at_most("soak_p99_last_vs_first", ratio(last, first), SOAK_P99_GOAL)
