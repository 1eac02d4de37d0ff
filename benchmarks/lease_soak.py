"""The soak mode of lease_throughput (`--soak-minutes M`): is the service's latency flat over
a long run at a load it can carry?

First the capacity: workers lease in a closed loop (benchmarks.lease_loop: LeaseNextSession
with min_sync_interval 0, then ReleaseLease) with CAPACITY_IN_FLIGHT callers for `capacity`
seconds after a warm-up; the cycles completed per second are the capacity. Then the same
cycles in an open loop at SOAK_LOAD of that rate for M minutes (SOAK_IN_FLIGHT callers on a
fixed schedule, so a slower service does not lower the offered load). The p99 of every RPC
that ended in the first minute is compared with the last minute's (windows of M/3 when M < 3).

Before the capacity is measured the database is aged: the audit trail and the numbered change
log of AGED_CYCLES earlier cycles are written into it and checkpointed (`--soak-aged-cycles`),
so the capacity is that of a database past its shared buffers, as production's is (the trail
is kept for weeks), not of a fresh one that the soak then outgrows: on a fresh database the
capacity measured in seconds was more than the box carried from the fourth minute on, when
the tables (~30 MB a minute) passed shared_buffers (128 MB) and the first checkpoint began.
The database is vacuumed as a production server's autovacuum daemon would (this box's server
runs without it: benchmarks.autovacuum). Target: soak_p99_last_vs_first <= 1.2. Figures:
capacity, offered and achieved rates, p99 per minute, errors, the service's CPU per cycle and
its RSS at the start and the end (a leak shows as growth), and the stand-in's vacuums.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from auth_service.storage.change_log import TIMES
from benchmarks.autovacuum import AutovacuumStandIn
from benchmarks.harness import (
    TABLE,
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
# Earlier lease cycles written before the capacity is measured: what some 12 minutes at this
# box's capacity (~360 cycles/s) leave behind, two audit events and two change-log entries
# each. The database then starts at ~650 MB, five times the 128 MB of shared_buffers.
AGED_CYCLES = 250_000
SOAK_P99_GOAL = 1.2
CAPACITY_IN_FLIGHT = 32
# Enough callers that the paced load never waits for a free one.
SOAK_IN_FLIGHT = 32
WARMUP_SECONDS = 2.0
MINUTE = 60.0
MB = 1_000_000
METHODS = ("LeaseNextSession", "ReleaseLease")


@dataclass(frozen=True)
class SoakPlan:
    """How long the soak runs, how long its capacity is measured, how aged its database is."""

    minutes: float
    capacity_seconds: float
    aged_cycles: int = AGED_CYCLES


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
    plan: SoakPlan,
) -> None:
    if plan.aged_cycles:
        log(f"soak: ageing the database by {plan.aged_cycles:,} cycles")
        megabytes = age_database(database, plan.aged_cycles)
        report.figure("soak_aged_cycles", plan.aged_cycles, "cycles")
        report.figure("soak_database_size_start", megabytes, "MB")
    # Dead row versions pile up at this load: vacuumed as a production server's daemon would.
    with AutovacuumStandIn(database.conninfo) as autovacuum:
        _soak(report, targets, metadata, server_pids, database.name, plan)
    report.figure("soak_server_autovacuum", int(autovacuum.work.server_autovacuum), "(1 = on)")
    report.figure("soak_stand_in_vacuums", autovacuum.work.vacuums, "vacuums")
    report.figure("soak_stand_in_analyzes", autovacuum.work.analyzes, "analyzes")


def age_database(database: PostgresDatabase, cycles: int) -> float:
    """The audit events and numbered change-log entries of `cycles` earlier lease cycles of
    the seeded users (grant and release each), then VACUUM ANALYZE and CHECKPOINT; the
    database's size in MB."""
    users = int(database.execute(f"SELECT count(*) FROM {TABLE}")[0][0])
    rows = 2 * cycles
    # One earlier RPC per row g over the last hour: a grant when g is odd, then its release;
    # the users in turn.
    rpc = "CASE WHEN g % 2 = 1 THEN 'LeaseNextSession' ELSE 'ReleaseLease' END"
    at = f"now() - interval '1 hour' + g * interval '{3600 / rows:.6f} seconds'"
    of_user = (
        f"FROM generate_series(1, {rows}) AS g "
        f"JOIN (SELECT user_id, row_number() OVER (ORDER BY user_id) - 1 AS n FROM {TABLE}) u "
        f"ON u.n = ((g + 1) / 2) % {users}"
    )
    database.execute(
        "INSERT INTO garmin_audit_event (occurred_at, caller, rpc, user_id, outcome_code, "
        "outcome_reason, lease_id, fencing_token) "
        f"SELECT {at}, 'bench-worker', {rpc}, u.user_id, 'OK', 'OK', "
        f"encode(sha256(((g + 1) / 2)::text::bytea), 'hex'), (g + 1) / 2 {of_user}"
    )
    times = ", ".join(f"'{name}', to_json({at})" for name in TIMES)
    status = (
        "json_build_object('user_id', u.user_id, 'state', 'ACTIVE', 'session_version', 1, "
        f"'kind', 'DI_OAUTH2', 'invalidated_reason', NULL, {times})::text"
    )
    # Numbered after whatever the service's sequencer numbered already, and the counter moved
    # past them, in one transaction (the counter row locked meanwhile).
    with psycopg.connect(database.conninfo) as connection:
        last = connection.execute(
            b"SELECT last_position FROM garmin_change_counter WHERE id = 1 FOR UPDATE"
        ).fetchone()
        if last is None:
            raise RuntimeError("the change counter is missing: is the database migrated?")
        connection.execute(
            "INSERT INTO garmin_session_change (position, occurred_at, user_id, rpc, state, "
            f"status) SELECT {int(last[0])} + g, {at}, u.user_id, {rpc}, 'ACTIVE', {status} "
            f"{of_user}".encode()
        )
        connection.execute(
            b"UPDATE garmin_change_counter SET last_position = last_position + %s WHERE id = 1",
            (rows,),
        )
    database.execute("VACUUM ANALYZE")
    database.execute("CHECKPOINT")
    size = database.execute("SELECT pg_database_size(current_database())")[0][0]
    return int(size) / MB


def _soak(
    report: Report,
    targets: Sequence[str],
    metadata: tuple[tuple[str, str], ...],
    server_pids: Sequence[int],
    database_name: str,
    plan: SoakPlan,
) -> None:
    minutes = plan.minutes
    log(f"soak: measuring capacity ({CAPACITY_IN_FLIGHT} callers, closed loop)")
    capacity = measure_capacity(targets, metadata, plan.capacity_seconds)
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
