"""A refresh storm: N DI sessions all due at once, two service replicas on one PostgreSQL
database, sync workers leasing in a loop meanwhile.

    .venv/bin/python -m benchmarks.refresh_storm [--sessions N] [--replicas R]
        [--concurrency C] [--latency S] [--workers W] [--service-revision REV]

The emulator runs in its own process (`python -m garmin_emulator`, every answer `--latency`
late) with one account per session; it issues a DI pair per account in bulk
(`POST /__emulator/di-tokens`), and the pairs are COPYed into a fresh database as ACTIVE DI
sessions (benchmarks.di_sessions): even users with an unknown refresh expiry (as imported
from a token file: due for keep-alive and at every lease), odd users with a refresh token the
service believes dies within the hour (due for keep-alive only). Then R replicas start
(`GARMIN_AUTH_REFRESH_CONCURRENCY=C`, `GARMIN_AUTH_KEEPALIVE_INTERVAL=1`) and W callers lease
in a loop across them (benchmarks.lease_loop): keep-alive and the lease grants' central
refresh drive the storm together, claiming each refresh on the row.

The storm runs from the first replica's start until the emulator has rotated N refresh tokens
(`GET /__emulator/di-records`), plus a settling time in which any second refresh would show.
Its wall ends at the last refresh the service committed (the audit trail). Targets:
- every session refreshed by Garmin exactly once (the emulator's count per account);
- zero presentations of a rotated-out refresh token;
- at most C x R token requests in flight at Garmin (the emulator's peak);
- every session still ACTIVE, and none still due for keep-alive afterwards;
- LeaseNextSession p99 during the storm within the quiet lease goal (README, 25 ms) plus one
  Garmin answer (a lease may have to wait for its session's refresh), and no failed lease.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import requests

from benchmarks.di_sessions import issue_pairs, seed_di_sessions, write_accounts
from benchmarks.harness import (
    TABLE,
    CpuSample,
    Credentials,
    EmulatorProcess,
    PostgresDatabase,
    Report,
    ServiceProcess,
    ServiceTree,
    Workdir,
    free_port,
    log,
    percentile,
    ratio,
    run_reported,
    service_environment,
)
from benchmarks.lease_loop import LeaseLoop, LoopResult
from garmin_emulator import DI_RECORDS_PATH, DI_TOKEN_PATH
from garmin_emulator.options import RECORDED_REFRESH_TOKEN_EXPIRES_IN

SESSIONS = 10_000
QUIET_LEASE_P99_GOAL_MS = 25.0
KEEPALIVE_INTERVAL_SECONDS = 1
KEEPALIVE_RATE = 1000
# A refresh token the service believes dies this soon (well inside the keep-alive window).
DYING_IN = timedelta(hours=1)
# After the storm, no session may be due again for this long (the new pair lives ~30 days).
LEARNED_AT_LEAST = timedelta(days=20)
POLL_SECONDS = 0.5
AUDIT = "garmin_audit_event"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refresh_storm")
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="REFRESH_CONCURRENCY")
    parser.add_argument("--latency", type=float, default=0.05, help="Garmin's answer time (s)")
    parser.add_argument("--workers", type=int, default=16, help="callers leasing in a loop")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after (s)")
    parser.add_argument("--settle", type=float, default=3.0, help="watch after the storm (s)")
    ServiceTree.add_argument(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, report: Report) -> None:
    with Workdir() as workdir:
        tree = ServiceTree(workdir, args.service_revision)
        report.note(f"service code: {tree.describe()}")
        credentials = Credentials.create(workdir)
        accounts = write_accounts(workdir / "accounts.txt", args.sessions)
        emulator_args = ["--users-from-file", str(accounts), "--activities", "0"]
        emulator_args += ["--latency", str(args.latency)]
        with (
            PostgresDatabase() as database,
            EmulatorProcess(workdir / "emulator.log", emulator_args) as emulator,
        ):
            extra = {
                "GARMIN_AUTH_REFRESH_CONCURRENCY": str(args.concurrency),
                "GARMIN_AUTH_KEEPALIVE_INTERVAL": str(KEEPALIVE_INTERVAL_SECONDS),
                # The storm measures the refresh slots, not keep-alive's pace toward Garmin.
                "GARMIN_AUTH_KEEPALIVE_RATE": str(KEEPALIVE_RATE),
            }
            replicas = [
                ServiceProcess(
                    service_environment(
                        database,
                        credentials,
                        upstream_url=emulator.url,
                        port=free_port(),
                        tree=tree,
                        extra=extra,
                    ),
                    workdir / f"replica-{n}.log",
                )
                for n in range(args.replicas)
            ]
            database.migrate(replicas[0].env)
            seed(args, report, database, credentials, emulator.url)
            storm(args, report, database, credentials, emulator.url, replicas)


def seed(
    args: argparse.Namespace,
    report: Report,
    database: PostgresDatabase,
    credentials: Credentials,
    emulator_url: str,
) -> None:
    started = time.perf_counter()
    log(f"issuing {args.sessions} DI pairs and seeding {database.name}")
    files = issue_pairs(emulator_url, args.sessions)
    now = datetime.now(UTC)
    seed_di_sessions(
        database,
        credentials.keyring,
        files,
        refresh_expiry=lambda i: None if i % 2 == 0 else now + DYING_IN,
        # A shuffled sync order, so the workers and keep-alive (user order) meet at random.
        last_synced_at=lambda i: now - timedelta(hours=2, seconds=(i * 7919) % args.sessions),
        lifetime_seconds=RECORDED_REFRESH_TOKEN_EXPIRES_IN,
        now=now,
    )
    database.vacuum_analyze()
    report.figure("sessions", args.sessions, "rows")
    report.figure("seed_time", time.perf_counter() - started, "s")


def di_records(emulator_url: str) -> dict[str, dict[str, int]]:
    answer = requests.get(emulator_url + DI_RECORDS_PATH, timeout=30)
    answer.raise_for_status()
    records: dict[str, dict[str, int]] = answer.json()
    return records


def wait_for_refreshes(emulator_url: str, count: int, timeout: float) -> bool:
    """Until Garmin has rotated `count` refresh tokens (False: not within `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(di_records(emulator_url)["di_refreshes"].values()) >= count:
            return True
        time.sleep(POLL_SECONDS)
    return False


def storm(
    args: argparse.Namespace,
    report: Report,
    database: PostgresDatabase,
    credentials: Credentials,
    emulator_url: str,
    replicas: Sequence[ServiceProcess],
) -> None:
    log(f"starting {len(replicas)} replicas: the storm begins")
    started = time.time()
    try:
        for replica in replicas:
            replica.start()
        pids = [replica.pid for replica in replicas]
        before = CpuSample.take(pids)
        report.figure("start_to_serving", max(r.wait_serving() for r in replicas), "s")
        targets = [replica.target for replica in replicas]
        with LeaseLoop(targets, credentials.worker_metadata(), args.workers) as loop:
            finished = wait_for_refreshes(emulator_url, args.sessions, args.timeout)
            log("every session refreshed" if finished else "the storm did not finish in time")
            cpu = before.until(CpuSample.take(pids))
            time.sleep(args.settle)
            leases = loop.stop()
    finally:
        for replica in replicas:
            replica.stop()
    # Where the two cores went while the storm ran (other helpers' load included).
    report.figure("replicas_cpu", ratio(cpu.server, cpu.wall), "cores")
    report.figure("machine_cpu", ratio(cpu.machine, cpu.wall), "cores")
    ended = last_refresh_at(database) or time.time()
    report_storm(args, report, database, di_records(emulator_url), leases, started, ended)


def last_refresh_at(database: PostgresDatabase) -> float | None:
    rows = database.execute(
        f"SELECT max(occurred_at) FROM {AUDIT} WHERE outcome_reason = 'SESSION_REFRESHED'"
    )
    return rows[0][0].timestamp() if rows and rows[0][0] is not None else None


def report_storm(
    args: argparse.Namespace,
    report: Report,
    database: PostgresDatabase,
    records: dict[str, dict[str, int]],
    leases: LoopResult,
    started: float,
    ended: float,
) -> None:
    n, bound = args.sessions, args.concurrency * args.replicas
    wall = ended - started
    ideal = n * args.latency / bound
    refreshes = records["di_refreshes"]
    report.figure("replicas", args.replicas, "processes")
    report.figure("refresh_concurrency_per_replica", args.concurrency, "requests")
    report.figure("garmin_latency", args.latency * 1000, "ms")
    report.figure("storm_wall", wall, "s")
    report.figure("storm_wall_over_ideal", ratio(wall, ideal), "x")
    report.figure("garmin_refreshes", sum(refreshes.values()), "refreshes")
    report.figure("refresh_rate", ratio(sum(refreshes.values()), wall), "refreshes/s")
    # Token requests x Garmin's answer time / wall: how many of the C x R slots Garmin kept
    # busy on average (a lower bound: the emulator's own work is left out).
    answered = sum(records["token_outcomes"].values())
    report.figure("garmin_mean_in_flight", ratio(answered * args.latency, wall), "requests")
    for outcome, count in sorted(records["token_outcomes"].items()):
        report.figure(f"token_answers_{outcome}", count, "answers")
    by_asker = database.execute(
        f"SELECT rpc, count(*) FROM {AUDIT} WHERE outcome_reason = 'SESSION_REFRESHED' "
        "GROUP BY rpc ORDER BY rpc"
    )
    for rpc, count in by_asker:
        report.figure(f"refreshed_by_{rpc}", count, "sessions")
    lease_ms = leases.latencies_ms("LeaseNextSession", started, ended)
    report.figure("leases_during_storm", len(lease_ms), "calls")
    # The share of leases whose grant refreshed its session itself (a grant that waited for
    # keep-alive's claim instead is not counted).
    by_lease = dict(by_asker).get("LeaseNextSession", 0)
    report.figure("leases_refreshing_share", ratio(by_lease, len(lease_ms)), "fraction")
    report.figure("lease_p50_during_storm", percentile(lease_ms, 50), "ms")
    report.figure("lease_p90_during_storm", percentile(lease_ms, 90), "ms")
    report.figure("lease_max_during_storm", max(lease_ms, default=float("nan")), "ms")
    for what, count in sorted(leases.errors.items()):
        report.note(f"{count} x {what}")
    active, due = database.execute(
        f"SELECT count(*) FILTER (WHERE state = 'ACTIVE'), count(*) FILTER (WHERE state = "
        "'ACTIVE' AND (refresh_token_expires_at IS NULL OR refresh_token_expires_at < %s)) "
        f"FROM {TABLE}",
        (datetime.now(UTC) + LEARNED_AT_LEAST,),
    )[0]

    once = sum(1 for count in refreshes.values() if count == 1)
    report.at_least("sessions_refreshed_exactly_once", once, n)
    report.at_most("refresh_token_reuses", sum(records["refresh_token_reuses"].values()), 0)
    peak = records["peak_in_flight"].get(DI_TOKEN_PATH, 0)
    report.at_most("garmin_token_requests_in_flight_peak", peak, bound)
    report.at_least("sessions_active_after", active, n)
    report.at_most("sessions_still_due_after", due, 0)
    goal = QUIET_LEASE_P99_GOAL_MS + args.latency * 1000
    report.at_most("lease_p99_during_storm", percentile(lease_ms, 99), goal)
    report.at_most("lease_errors", sum(leases.errors.values()), 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_reported(run, args)


if __name__ == "__main__":
    sys.exit(main())
