"""Lease throughput of one service process on PostgreSQL, against two baselines measured in
the same run: the same process's grpc.health.v1 Check (its gRPC ceiling) and the repository's
own grant + release statements issued directly with psycopg (workers touching the database).

    .venv/bin/python -m benchmarks.lease_throughput [--duration S] [--quick] [--processes K]
        [--in-flight 8,32] [--floor-only] [--no-single-caller] [--pin-cpus LIST]
        [--service-revision REV]

10,000 ACTIVE sessions are COPYed into a fresh database (each with its own encrypted blob and a
token valid for ten years: no lease triggers a central refresh). First one caller (N = 1:
latency floors, no targets), then N = 8 and 32 callers in flight, from a separate process;
each workload runs for a warm-up and then a measured window:

- health: Check.
- lease_session: LeaseSession + ReleaseLease over distinct users (both calls count as RPCs).
- lease_handover: LeaseNextSession carrying the release of the caller's previous lease (what
  `sync_worker --all` sends: one RPC per user); `lease_handover_users_vs_lease_next` is its
  users per second over lease_next's (two RPCs per user), with the server CPU per user beside.
- lease_next: LeaseNextSession(min_sync_interval = 1 h) + ReleaseLease. Every session starts
  last synced 2-3 h ago, so each is handed out once per round; the sync columns are reset
  before each window (a round never runs out at these rates; `exhausted` would say so).
- floor_sync / floor_asyncio: the same LeaseSession + ReleaseLease load against the floor
  (benchmarks.floor_server: one autocommitted UPDATE ... RETURNING through a pool of the
  service's size and AES-256-GCM of a 1 KiB blob per RPC, nothing else), its sync and its
  asyncio variant, as many processes as the service has, run right after lease_session.
- direct_tx: the grant and release UPDATEs with psycopg, each in BEGIN/COMMIT; one statement
  counts like one RPC. direct_autocommit and direct_tx_preping are the same statements in
  autocommit and after a pre-ping `SELECT 1`: evidence for the levers, no target.

Targets: lease_vs_floor = lease_session's rate ÷ the better floor's at N = 8 (>= 0.8) and
lease_cpu_ms = the service's CPU per lease RPC at N = 8 (<= 0.5 ms), plus the older ratios to
health and to direct psycopg. `--floor-only` runs just health, lease_session and the floors
per caller count (the two targets, in a third of the time).

`--soak-minutes M` runs the soak instead (benchmarks/lease_soak.py): the database aged by
`--soak-aged-cycles` earlier cycles, the capacity of LeaseNextSession + ReleaseLease cycles in
a closed loop, then M minutes at 80% of it in an open loop; target soak_p99_last_vs_first
<= 1.2.

Server CPU per RPC is the service process's utime+stime over the window divided by the RPCs
completed in it; PostgreSQL's is that of the backends connected to the benchmark's database
(a lower bound: a backend that disconnects inside the window takes its CPU with it).
`other_cpu` is what the rest of the machine burned meanwhile: on a shared box, read the
figures of a window with a large `other_cpu` with care. `db_connections_opened` is the rate of new
connections to the database inside the window (pg_stat_database.sessions): the service's
pool closing and reopening connections under load.

--processes K starts K service processes on the same port (gRPC sets SO_REUSEPORT, so the
kernel spreads connections over them; callers use one channel per 4 in flight) and sums
their CPU: what one replica gains from more processes, with no change to the service.

--pin-cpus LIST confines every server process, ours and the floors alike, to one CPU (the
i-th process of each kind to the i-th CPU of LIST): a replica given one exclusive CPU
(benchmarks.cpu_pinning says why that changes the figures).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks import cpu_pinning
from benchmarks.floor_server import FloorProcess
from benchmarks.harness import (
    TABLE,
    Credentials,
    LeaseStatements,
    PostgresDatabase,
    Report,
    ServiceProcess,
    ServiceTree,
    Workdir,
    blob_size,
    capture_lease_statements,
    free_port,
    log,
    percentile,
    ratio,
    run_reported,
    seed_due_sessions,
    service_stack,
)
from benchmarks.lease_soak import AGED_CYCLES, SoakPlan, run_soak
from benchmarks.load import LoadSpec, Measured, measure

USERS = 10_000
IN_FLIGHT = (8, 32)
GRPC = ("health", "lease_session", "lease_next", "lease_handover")
# The floor servers (benchmarks.floor_server), driven with the lease_session load.
FLOORS = ("floor_sync", "floor_asyncio")
DIRECT = ("direct_tx", "direct_autocommit", "direct_tx_preping")
# One caller: each call's latency is its own round trips and CPU, with nothing queued ahead.
SINGLE_CALLER = ("health", "lease_session", *DIRECT)
LEASE_VS_HEALTH = 0.5
LEASE_VS_DIRECT = 0.3
P99_GOAL_MS = 25.0
P99_GOAL_IN_FLIGHT = 8
LEASE_VS_FLOOR = 0.8
LEASE_CPU_MS = 0.5


def reset_due(database: PostgresDatabase) -> None:
    """Every session free and last synced 2-3 h ago: all due for min_sync_interval = 1 h."""
    database.execute(
        f"UPDATE {TABLE} SET last_synced_at = now() - interval '2 hours' "
        "- random() * interval '1 hour', last_sync_attempt_at = NULL, lease_id = NULL, "
        "lease_holder = NULL, lease_acquired_at = NULL, lease_expires_at = NULL"
    )
    database.vacuum_analyze()


def report_phase(report: Report, name: str, measured: Measured, *, grpc_phase: bool) -> None:
    result, cpu = measured.result, measured.cpu
    latencies = result.all_latencies()
    unit = "rpc/s" if grpc_phase else "stmt/s"
    report.figure(f"{name}_rate", result.rate, unit)
    report.figure(f"{name}_p50", percentile(latencies, 50), "ms")
    report.figure(f"{name}_p99", percentile(latencies, 99), "ms")
    if grpc_phase:
        report.figure(f"{name}_server_cpu_per_rpc", measured.per_call_ms(cpu.server), "ms")
        report.figure(f"{name}_server_cpu", cpu.server / cpu.wall, "cores")
        report.figure(
            f"{name}_server_system_cpu_share", ratio(cpu.server_system, cpu.server), "fraction"
        )
        report.figure(
            f"{name}_server_context_switches_per_rpc",
            ratio(cpu.server_switches, result.calls),
            "switches",
        )
        report.figure(f"{name}_db_connections_opened", cpu.sessions / cpu.wall, "conn/s")
    report.figure(f"{name}_postgres_cpu_per_call", measured.per_call_ms(cpu.postgres), "ms")
    report.figure(f"{name}_client_cpu", result.client_cpu / result.elapsed, "cores")
    # Everything else on the machine (another test run on a shared box shows up here).
    other = cpu.machine - cpu.server - cpu.postgres - result.client_cpu
    report.figure(f"{name}_other_cpu", max(other, 0.0) / cpu.wall, "cores")
    if result.errors or not grpc_phase or name.startswith(("lease", "floor")):
        report.figure(f"{name}_errors", sum(result.errors.values()), "calls")
    for what, count in sorted(result.errors.items()):
        report.note(f"{name}: {count} x {what}")
    if result.exhausted:
        report.note(f"{name}: the round of due sessions ran out before the window ended")


def run(args: argparse.Namespace, report: Report) -> None:
    with Workdir() as workdir:
        tree = ServiceTree(workdir, args.service_revision)
        report.note(f"service code: {tree.describe()}")
        with service_stack(workdir, tree=tree) as stack:
            measure_stack(args, report, *stack)


def measure_stack(
    args: argparse.Namespace,
    report: Report,
    database: PostgresDatabase,
    credentials: Credentials,
    service: ServiceProcess,
) -> None:
    log(f"seeding {args.users} sessions into {database.name}")
    seed_due_sessions(database, credentials.keyring, args.users)
    report.figure("sessions", args.users, "rows")
    report.figure("session_blob", blob_size(credentials.keyring), "bytes")
    statements = capture_lease_statements(database.url)
    service.start()
    report.figure("start_to_serving", service.wait_serving(), "s")
    # More processes on the same port (gRPC sets SO_REUSEPORT): the kernel spreads the
    # callers' connections over them. The figures then sum the CPU of every process.
    extras = [
        ServiceProcess(service.env, service.log_path.with_name(f"service-{n}.log"))
        for n in range(1, args.processes)
    ]
    # As many floor processes per variant as service processes, each variant on its own port.
    floors = {
        variant: [
            FloorProcess(
                variant.removeprefix("floor_"),
                database.conninfo,
                target,
                service.log_path.with_name(f"{variant}-{n}.log"),
            )
            for n in range(args.processes)
        ]
        for variant, target in ((name, f"127.0.0.1:{free_port()}") for name in FLOORS)
    }
    everyone: list[ServiceProcess | FloorProcess] = [
        *extras,
        *(floor for group in floors.values() for floor in group),
    ]
    try:
        for process in everyone:
            process.start()
            process.wait_listening()
        report.figure("service_processes", args.processes, "processes")
        servers = {
            name: Servers(group[0].target, [floor.pid for floor in group])
            for name, group in floors.items()
        }
        pids = [service.pid, *(extra.pid for extra in extras)]
        pinned = cpu_pinning.confine_groups(
            [pids, *(floor.pids for floor in servers.values())], args.pin_cpus
        )
        if pinned:
            report.note(pinned)
        if args.soak_minutes:
            run_soak(
                report,
                [service.target],
                credentials.worker_metadata(),
                pids,
                database=database,
                plan=SoakPlan(args.soak_minutes, args.duration, args.soak_aged_cycles),
            )
            return
        servers.update(dict.fromkeys(GRPC, Servers(service.target, pids)))
        run_phases(args, report, database, credentials, servers, statements)
    finally:
        for process in everyone:
            process.stop()


@dataclass(frozen=True)
class Servers:
    """Where a gRPC phase sends its load and whose CPU it reads."""

    target: str
    pids: list[int]


def run_phases(
    args: argparse.Namespace,
    report: Report,
    database: PostgresDatabase,
    credentials: Credentials,
    servers: dict[str, Servers],
    statements: LeaseStatements,
) -> None:
    rates: dict[str, float] = {}
    p99s: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    next_user = 0
    phases = [(1, workload) for workload in SINGLE_CALLER if args.single_caller] + [
        (in_flight, workload) for in_flight in args.in_flight for workload in phase_order(args)
    ]
    for in_flight, workload in phases:
        name = f"{workload}_n{in_flight}"
        if workload in ("lease_next", "lease_handover"):
            reset_due(database)
        grpc_phase = workload in servers
        server = servers.get(workload, Servers("", []))
        spec = LoadSpec(
            workload="lease_session" if workload in FLOORS else workload,
            in_flight=in_flight,
            duration=args.duration,
            warmup=args.warmup,
            target=server.target,
            metadata=credentials.worker_metadata(),
            user_count=args.users,
            first_user=next_user,
            conninfo=database.conninfo,
            grant=statements.grant,
            release=statements.release,
        )
        log(f"{name}: {args.warmup:g} s warm-up + {args.duration:g} s")
        measured = measure(spec, server.pids, database.name)
        next_user = measured.result.next_user
        report_phase(report, name, measured, grpc_phase=grpc_phase)
        rates[name] = measured.result.rate
        p99s[name] = percentile(measured.result.all_latencies(), 99)
        cpu_ms[name] = measured.per_call_ms(measured.cpu.server)
    report_floor(report, args.in_flight, rates, cpu_ms)
    for in_flight in args.in_flight:
        handover = rates.get(f"lease_handover_n{in_flight}")
        cycles = rates.get(f"lease_next_n{in_flight}", 0) / 2  # two RPCs per user
        if handover is not None and cycles:
            # Users handed from one lease to the next per second: one RPC each, or two.
            report.figure(
                f"lease_handover_users_vs_lease_next_n{in_flight}", handover / cycles, "ratio"
            )
            report.figure(
                f"lease_handover_cpu_per_user_vs_lease_next_n{in_flight}",
                cpu_ms[f"lease_handover_n{in_flight}"] / (2 * cpu_ms[f"lease_next_n{in_flight}"]),
                "ratio",
            )
    for in_flight in args.in_flight:
        health, direct = rates[f"health_n{in_flight}"], rates.get(f"direct_tx_n{in_flight}", 0)
        for lease in ("lease_session", "lease_next"):
            if f"{lease}_n{in_flight}" not in rates:  # --floor-only
                continue
            rate = rates[f"{lease}_n{in_flight}"]
            report.at_least(
                f"{lease}_vs_health_n{in_flight}", rate / health if health else 0, LEASE_VS_HEALTH
            )
            if direct:
                report.at_least(
                    f"{lease}_vs_direct_psycopg_n{in_flight}", rate / direct, LEASE_VS_DIRECT
                )
            if in_flight == P99_GOAL_IN_FLIGHT:
                report.at_most(f"{lease}_p99_n{in_flight}_ms", p99s[f"{lease}_n{in_flight}"], 25)


def phase_order(args: argparse.Namespace) -> list[str]:
    """Per caller count: health, then our lease cycle right beside the floors', then the
    rest (LeaseNextSession and the direct statements, skipped by --floor-only)."""
    if args.floor_only:
        return ["health", "lease_session", *FLOORS]
    return ["health", "lease_session", *FLOORS, "lease_next", "lease_handover", *DIRECT]


def report_floor(
    report: Report, in_flight: Sequence[int], rates: dict[str, float], cpu_ms: dict[str, float]
) -> None:
    """lease_vs_floor: our LeaseSession + ReleaseLease rate over the better floor variant's
    (the same load, the same caller count, the same run); lease_cpu_ms: the service's CPU per
    lease RPC at N = 8 (or the first caller count measured)."""
    for n in in_flight:
        floor = max(rates[f"{variant}_n{n}"] for variant in FLOORS)
        lease = rates[f"lease_session_n{n}"]
        for variant in FLOORS:
            report.figure(
                f"lease_vs_{variant}_n{n}", ratio(lease, rates[f"{variant}_n{n}"]), "ratio"
            )
            report.figure(
                f"lease_cpu_vs_{variant}_n{n}",
                ratio(cpu_ms[f"lease_session_n{n}"], cpu_ms[f"{variant}_n{n}"]),
                "ratio",
            )
        name = "lease_vs_floor" if n == P99_GOAL_IN_FLIGHT else f"lease_vs_floor_n{n}"
        report.at_least(name, ratio(lease, floor), LEASE_VS_FLOOR)
    n = P99_GOAL_IN_FLIGHT if P99_GOAL_IN_FLIGHT in in_flight else in_flight[0]
    report.at_most("lease_cpu_ms", cpu_ms[f"lease_session_n{n}"], LEASE_CPU_MS)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lease_throughput")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds first")
    parser.add_argument("--quick", action="store_true", help="2 s phases (a smoke run)")
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument(
        "--no-single-caller",
        dest="single_caller",
        action="store_false",
        help="skip the N=1 latency phases (health, lease_session, direct_*)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="service processes sharing the port (SO_REUSEPORT); default 1",
    )
    parser.add_argument(
        "--in-flight",
        type=lambda text: [int(part) for part in text.split(",")],
        default=list(IN_FLIGHT),
        help="comma-separated caller counts (default 8,32)",
    )
    parser.add_argument(
        "--floor-only",
        action="store_true",
        help="per caller count only health, lease_session and the two floors (the targets)",
    )
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=0.0,
        metavar="M",
        help="instead of the phases: capacity (closed loop), then M minutes at 80%% of it "
        "(benchmarks.lease_soak); target soak_p99_last_vs_first",
    )
    parser.add_argument(
        "--soak-aged-cycles",
        type=int,
        default=AGED_CYCLES,
        metavar="C",
        help="before the soak's capacity: the audit trail and change log of C earlier cycles "
        "are written into the database (default %(default)s; 0: a fresh database)",
    )
    cpu_pinning.add_argument(parser)
    ServiceTree.add_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 0.5)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_reported(run, args)


if __name__ == "__main__":
    sys.exit(main())
