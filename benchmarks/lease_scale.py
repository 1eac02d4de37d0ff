"""LeaseNextSession latency as the sessions table grows: 10k, 100k and 1M sessions, most of
them not due, plus the database bytes per stored session and the due query's plan at 1M.

    .venv/bin/python -m benchmarks.lease_scale [--duration S] [--quick] [--try-index]

Sessions are COPYed in (each with its own encrypted blob, tokens valid for ten years) in
steps, into one table: 10k, then 90k more, then 900k more. 1% of the sessions are due (last
synced 2-3 h ago; min_sync_interval is 1 h); the other 99% were synced within the last
50 minutes. After each step the table is VACUUM ANALYZEd (what autovacuum does after a bulk
load) and one caller (N = 1, a separate process) runs LeaseNextSession + ReleaseLease cycles.
Every cycle marks a session synced, so the due set is restored before each round; at 10k
(100 due sessions) the window is made of several rounds.

Target: lease_next_p50_ratio = LeaseNextSession p50 at the largest size (1M) ÷ at the smallest
(10k) <= 1.2 (issue 15; the due query must walk an index,
not the table). At 1M the script prints EXPLAIN (ANALYZE, BUFFERS) of the repository's own
grant_next statement (captured from SQLAlchemy; run in a rolled-back transaction).

--try-index also times, at each size, the due statement as the service issues it and a
candidate (the same grant with `coalesce(last_synced_at, '-infinity')` in place of
`last_synced_at IS NULL OR ...`, over an index in that order) directly with psycopg, each run
rolled back: evidence for a schema change, not a figure of the service.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from benchmarks.harness import (
    SENTINEL_DUE,
    SENTINEL_EXPIRES,
    SENTINEL_HOLDER,
    SENTINEL_LEASE,
    SENTINEL_NOW,
    TABLE,
    CapturedStatement,
    Credentials,
    LeaseStatements,
    PostgresDatabase,
    Report,
    ServiceProcess,
    ServiceTree,
    Workdir,
    capture_lease_statements,
    log,
    percentile,
    ratio,
    run_reported,
    seed_sessions,
    service_stack,
)
from benchmarks.load import LoadSpec, measure

SIZES = (10_000, 100_000, 1_000_000)
DUE_EVERY = 100  # 1% of the sessions are due
MIN_SYNC_INTERVAL_SECONDS = 3600
P50_RATIO_GOAL = 1.2
STATEMENT_RUNS = 40
# --try-index: an index whose order is the due query's order (never synced first), and the
# due query rewritten so that order is an index range: OR ... IS NULL becomes coalesce().
CANDIDATE_INDEX = "bench_candidate_due"
CANDIDATE_INDEX_SQL = (
    f"CREATE INDEX {CANDIDATE_INDEX} ON {TABLE} "
    "((coalesce(last_synced_at, '-infinity'::timestamptz)), user_id) WHERE state = 'ACTIVE'"
)
CANDIDATE_DUE_SQL = f"""UPDATE {TABLE} SET lease_id = %(lease_id)s, lease_holder = %(holder)s,
    lease_acquired_at = %(now)s, lease_expires_at = %(expires)s,
    fencing_token = fencing_token + 1, updated_at = %(now)s
WHERE user_id = (
    SELECT user_id FROM {TABLE}
    WHERE state = 'ACTIVE'
      AND coalesce(last_synced_at, '-infinity'::timestamptz) < %(due)s
      AND (last_sync_attempt_at IS NULL OR last_sync_attempt_at < %(due)s)
      AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s)
    ORDER BY coalesce(last_synced_at, '-infinity'::timestamptz), user_id
    LIMIT 1 FOR UPDATE SKIP LOCKED)
  AND state = 'ACTIVE' AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s)
RETURNING *"""


def label(size: int) -> str:
    return f"{size // 1_000_000}m" if size >= 1_000_000 else f"{size // 1000}k"  # noqa: PLR2004


def synced_at(now: datetime) -> Any:
    def last_synced_at(index: int) -> datetime:
        if index % DUE_EVERY == 0:
            return now - timedelta(hours=2, seconds=index % 3600)
        return now - timedelta(seconds=index % 3000)

    return last_synced_at


def restore_due(database: PostgresDatabase) -> None:
    """The 1% due sessions (user ids ending in 00) due again and free; the rest untouched."""
    database.execute(
        f"UPDATE {TABLE} SET last_synced_at = now() - interval '2 hours' "
        "- random() * interval '1 hour', last_sync_attempt_at = NULL, lease_id = NULL, "
        "lease_holder = NULL, lease_acquired_at = NULL, lease_expires_at = NULL "
        "WHERE right(user_id, 2) = '00'"
    )


def explain_due_query(
    database: PostgresDatabase, statement: CapturedStatement
) -> tuple[list[str], dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) of grant_next as text and as JSON, each rolled back."""
    now = datetime.now(UTC)
    params = statement.bind(
        {
            SENTINEL_LEASE: "bench-explain",
            SENTINEL_HOLDER: "bench-explain",
            SENTINEL_NOW: now,
            SENTINEL_EXPIRES: now + timedelta(minutes=5),
            SENTINEL_DUE: now - timedelta(seconds=MIN_SYNC_INTERVAL_SECONDS),
        }
    )
    with psycopg.connect(database.conninfo) as connection:
        text_plan = [
            str(row[0])
            for row in connection.execute(
                ("EXPLAIN (ANALYZE, BUFFERS) " + statement.sql).encode(), params
            )
        ]
        connection.rollback()
        row = connection.execute(
            ("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement.sql).encode(), params
        ).fetchone()
        connection.rollback()
    assert row is not None
    document = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return text_plan, document[0]


def due_parameters(statement: CapturedStatement | None) -> dict[str, Any]:
    """Parameters of one grant at `now`: the captured statement's, or the candidate's."""
    now = datetime.now(UTC)
    due = now - timedelta(seconds=MIN_SYNC_INTERVAL_SECONDS)
    expires = now + timedelta(minutes=5)
    if statement is None:
        return {
            "lease_id": "bench-time",
            "holder": "bench",
            "now": now,
            "expires": expires,
            "due": due,
        }
    return statement.bind(
        {
            SENTINEL_LEASE: "bench-time",
            SENTINEL_HOLDER: "bench",
            SENTINEL_NOW: now,
            SENTINEL_EXPIRES: expires,
            SENTINEL_DUE: due,
        }
    )


def time_statement(
    database: PostgresDatabase, sql: str, statement: CapturedStatement | None
) -> float:
    """p50 (ms) of STATEMENT_RUNS executions, each in a transaction rolled back."""
    timings: list[float] = []
    with psycopg.connect(database.conninfo) as connection:
        for _ in range(STATEMENT_RUNS):
            params = due_parameters(statement)
            started = time.perf_counter()
            row = connection.execute(sql.encode(), params).fetchone()
            timings.append((time.perf_counter() - started) * 1000)
            connection.rollback()
            if row is None:
                raise RuntimeError("the due statement found nothing due")
    return percentile(timings, 50)


def try_candidate(
    report: Report,
    name: str,
    database: PostgresDatabase,
    statements: LeaseStatements,
    *,
    explain: bool,
) -> None:
    """The due statement as the service issues it and the candidate, timed directly."""
    restore_due(database)
    database.vacuum_analyze()
    current = time_statement(database, statements.grant_next.sql, statements.grant_next)
    database.execute(CANDIDATE_INDEX_SQL)
    database.vacuum_analyze()
    candidate = time_statement(database, CANDIDATE_DUE_SQL, None)
    report.figure(f"due_statement_p50_{name}", current, "ms")
    report.figure(f"candidate_due_statement_p50_{name}", candidate, "ms")
    total, rows = database.bytes_per_session()
    report.figure(f"bytes_per_session_with_candidate_index_{name}", ratio(total, rows), "bytes")
    if explain:
        with psycopg.connect(database.conninfo) as connection:
            plan = connection.execute(
                ("EXPLAIN (ANALYZE, BUFFERS) " + CANDIDATE_DUE_SQL).encode(), due_parameters(None)
            ).fetchall()
            connection.rollback()
        for row in plan:
            report.note(f"candidate plan | {row[0]}")
    database.execute(f"DROP INDEX {CANDIDATE_INDEX}")


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [node]
    for child in node.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


def report_plan(report: Report, name: str, text_plan: list[str], plan: dict[str, Any]) -> None:
    nodes = plan_nodes(plan["Plan"])
    scans = [n for n in nodes if n.get("Relation Name") == TABLE]
    seq = [n for n in scans if n["Node Type"] == "Seq Scan"]
    rows_read = sum(
        int(n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * int(n["Actual Loops"])
        for n in scans
    )
    top = plan["Plan"]
    buffers = int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))
    report.figure(f"{name}_execution", float(plan["Execution Time"]), "ms")
    report.figure(f"{name}_rows_read", rows_read, "rows")
    report.figure(f"{name}_buffers", buffers, "blocks")
    report.figure(f"{name}_seq_scans", len(seq), "nodes")
    sorts = [n for n in nodes if n["Node Type"] == "Sort"]
    sorted_rows = sum(
        int(child["Actual Rows"]) for sort in sorts for child in sort.get("Plans", [])
    )
    report.figure(f"{name}_rows_sorted", sorted_rows, "rows")
    candidates = [n for n in scans if n["Node Type"] != "ModifyTable"]
    how = ", ".join(
        f"{n['Node Type']}{' using ' + n['Index Name'] if 'Index Name' in n else ''}"
        f" ({int(n.get('Actual Rows', 0))} rows)"
        for n in candidates
    )
    verdict = (
        "scans the whole table"
        if seq
        else f"reads every due row and sorts them ({sorted_rows} rows) to take one"
        if sorts
        else "walks an index in the query's order and stops at the first free due row"
    )
    report.note(f"{name}: {verdict}; reads: {how}")
    for line in text_plan:
        report.note(f"plan | {line}")


def measure_size(
    args: argparse.Namespace,
    database: PostgresDatabase,
    credentials: Credentials,
    service: ServiceProcess,
) -> tuple[list[float], list[float], float, float, float]:
    """LeaseNextSession and ReleaseLease latencies over rounds of the due set; also the
    calls per second and server/PostgreSQL CPU per RPC (ms)."""
    spec = LoadSpec(
        workload="lease_next",
        in_flight=args.in_flight,
        duration=1.0,
        warmup=0.0,
        target=service.target,
        metadata=credentials.worker_metadata(),
        min_sync_interval_seconds=MIN_SYNC_INTERVAL_SECONDS,
    )
    restore_due(database)
    measure(spec, [service.pid])  # warm-up round, not counted
    lease: list[float] = []
    release: list[float] = []
    elapsed = server_cpu = postgres_cpu = 0.0
    deadline = time.monotonic() + args.duration
    while (remaining := deadline - time.monotonic()) > 0.2:  # noqa: PLR2004
        restore_due(database)
        round_spec = replace(spec, duration=remaining)
        measured = measure(round_spec, [service.pid], database.name)
        lease += measured.result.latencies_ms.get("LeaseNextSession", [])
        release += measured.result.latencies_ms.get("ReleaseLease", [])
        elapsed += measured.result.elapsed
        server_cpu += measured.cpu.server
        postgres_cpu += measured.cpu.postgres
        if not measured.result.calls:
            break
    calls = len(lease) + len(release)
    return (
        lease,
        release,
        ratio(len(lease), elapsed),
        ratio(server_cpu * 1000, calls),
        ratio(postgres_cpu * 1000, calls),
    )


def report_size(
    args: argparse.Namespace,
    report: Report,
    name: str,
    database: PostgresDatabase,
    credentials: Credentials,
    service: ServiceProcess,
) -> float:
    lease, release, rate, server_ms, postgres_ms = measure_size(
        args, database, credentials, service
    )
    p50 = percentile(lease, 50)
    report.figure(f"lease_next_p50_{name}", p50, "ms")
    report.figure(f"lease_next_p99_{name}", percentile(lease, 99), "ms")
    report.figure(f"release_p50_{name}", percentile(release, 50), "ms")
    report.figure(f"lease_next_samples_{name}", len(lease), "calls")
    report.figure(f"lease_next_cycles_{name}", rate, "cycles/s")
    report.figure(f"server_cpu_per_rpc_{name}", server_ms, "ms")
    report.figure(f"postgres_cpu_per_rpc_{name}", postgres_ms, "ms")
    return p50


def run(args: argparse.Namespace, report: Report) -> None:
    with Workdir() as workdir:
        tree = ServiceTree(workdir, args.service_revision)
        report.note(f"service code: {tree.describe()}")
        with service_stack(workdir, tree=tree) as stack:
            run_sizes(args, report, *stack)


def run_sizes(
    args: argparse.Namespace,
    report: Report,
    database: PostgresDatabase,
    credentials: Credentials,
    service: ServiceProcess,
) -> None:
    statements = capture_lease_statements(database.url)
    service.start()
    service.wait_serving()
    now = datetime.now(UTC)
    loaded = 0
    p50s: dict[int, float] = {}
    for size in args.sizes:
        started = time.perf_counter()
        seed_sessions(database, credentials.keyring, range(loaded, size), synced_at(now), now=now)
        loaded = size
        database.vacuum_analyze()
        name = label(size)
        log(f"{name}: {size} sessions loaded in {time.perf_counter() - started:.1f} s")
        total, rows = database.bytes_per_session()
        heap = database.execute(f"SELECT pg_relation_size('{TABLE}')")[0][0]
        indexes = database.execute(f"SELECT pg_indexes_size('{TABLE}')")[0][0]
        report.figure(f"bytes_per_session_{name}", ratio(total, rows), "bytes")
        report.figure(f"heap_bytes_per_session_{name}", ratio(heap, rows), "bytes")
        report.figure(f"index_bytes_per_session_{name}", ratio(indexes, rows), "bytes")
        log(f"{name}: measuring LeaseNextSession for {args.duration:g} s")
        p50s[size] = report_size(args, report, name, database, credentials, service)
        if args.try_index:
            try_candidate(report, name, database, statements, explain=size == max(args.sizes))
    largest, smallest = max(args.sizes), min(args.sizes)
    restore_due(database)
    database.vacuum_analyze()
    report_plan(
        report, f"due_query_{label(largest)}", *explain_due_query(database, statements.grant_next)
    )
    report.figure(
        f"lease_next_p50_{label(largest)}_vs_{label(smallest)}",
        ratio(p50s[largest], p50s[smallest]),
        "ratio",
    )
    report.at_most("lease_next_p50_ratio", ratio(p50s[largest], p50s[smallest]), P50_RATIO_GOAL)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lease_scale")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per size")
    parser.add_argument("--quick", action="store_true", help="3 s per size (a smoke run)")
    parser.add_argument(
        "--sizes",
        type=lambda text: sorted(int(part) for part in text.split(",")),
        default=list(SIZES),
        help="comma-separated session counts (default 10000,100000,1000000)",
    )
    parser.add_argument("--in-flight", type=int, default=1, help="callers (default 1)")
    parser.add_argument(
        "--try-index",
        action="store_true",
        help="also time the due statement against a candidate index and query (an experiment)",
    )
    ServiceTree.add_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 3.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_reported(run, args)


if __name__ == "__main__":
    sys.exit(main())
