"""What one lease statement costs in Python CPU and wall time, layer by layer: evidence for
the levers in the README's Performance notes, not a figure of the running service.

    .venv/bin/python -m benchmarks.statement_costs [--duration S] [--rounds R] [--quick]

One thread in this process grants and releases distinct users' leases (10,000 seeded sessions)
for a few seconds per variant, and reports per statement the wall time (its round trips) and
this process's CPU time (its Python):

- orm_tx_preping: the service's path: `session_factory(create_engine_for(url))`, a
  `with db.begin()` unit of work around SqlLeaseRepository.grant / .release (ORM-enabled
  UPDATE ... RETURNING), pool_pre_ping on. This is what LeaseService does per RPC, minus
  gRPC, validation, views and logging.
- orm_tx: the same with pool_pre_ping off.
- orm_autocommit: the same statements on an AUTOCOMMIT engine (no BEGIN/COMMIT), pre-ping off.
- core_tx / core_autocommit: the repository's own statements executed as Core
  (`Connection.execute`: SQLAlchemy's compiled cache and result rows, no ORM Session, no
  identity map), in BEGIN/COMMIT or autocommit, pre-ping off.
- driver_sql_autocommit: the captured SQL text through SQLAlchemy's engine and pool
  (`exec_driver_sql`, autocommit): the floor of any SQLAlchemy path.
- psycopg_tx / psycopg_autocommit: the captured SQL with psycopg alone.
- service_trail / service_no_trail: the service's path today (Core connections, the
  statements straight on psycopg, the grant in BEGIN/COMMIT, the release in autocommit), with
  and without the audit event and change-log entry each lease statement writes: what the
  trail costs PostgreSQL and Python per statement.

It also reports the PostgreSQL backend CPU per statement (the benchmark database's backends),
which tells round trips apart better than wall time on a busy machine: BEGIN and COMMIT are
statements the server parses and runs too.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session

from auth_service.domain.audit import AuditedRpc
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.lease_repository import SqlLeaseRepository
from benchmarks.harness import (
    SENTINEL_EXPIRES,
    SENTINEL_HOLDER,
    SENTINEL_LEASE,
    SENTINEL_NOW,
    SENTINEL_SYNCED,
    SENTINEL_USER,
    CpuSample,
    LeaseStatements,
    PostgresDatabase,
    Report,
    ServiceTree,
    Workdir,
    capture_lease_statements,
    lease_repository,
    log,
    seed_sessions,
    service_stack,
    user_id,
)

USERS = 10_000
TTL = timedelta(seconds=60)

# One lease cycle: grant then release of one user; returns nothing, raises on a refusal.
Cycle = Callable[[str], None]


def _lease_id() -> str:
    return secrets.token_urlsafe(24)


# Runs one repository call in a unit of work of the variant's kind.
Unit = Callable[[Callable[[SqlLeaseRepository], Any]], Any]


def _repository_cycle(grant_unit: Unit, release_unit: Unit, *, trail: bool = False) -> Cycle:
    """Grant then release one user's lease through SqlLeaseRepository, each in its unit;
    `trail`: each statement also writes its audit event and change-log entry."""

    def cycle(user: str) -> None:
        now, lease = datetime.now(UTC), _lease_id()
        granted = grant_unit(
            lambda repo: repo.grant(
                user,
                lease_digest=lease,
                holder="bench",
                caller="bench",
                now=now,
                expires_at=now + TTL,
                record_as=AuditedRpc.LEASE_SESSION if trail else None,
            )
        )
        if granted is None:
            raise RuntimeError("grant refused")
        now = datetime.now(UTC)
        released = release_unit(
            lambda repo: repo.release(
                lease,
                caller="bench",
                now=now,
                synced_through=now,
                record_as=AuditedRpc.RELEASE_LEASE if trail else None,
            )
        )
        if released is None:
            raise RuntimeError("release refused")

    return cycle


def _sql_cycle(run: Callable[[str, dict[str, Any]], Any], statements: LeaseStatements) -> Cycle:
    """Grant then release one user's lease with the captured SQL, each through `run`."""

    def cycle(user: str) -> None:
        lease = _lease_id()
        if run(statements.grant.sql, _grant_params(statements, user, lease)) is None:
            raise RuntimeError("grant refused")
        if run(statements.release.sql, _release_params(statements, lease)) is None:
            raise RuntimeError("release refused")

    return cycle


@contextmanager
def orm_cycle(url: str, *, pre_ping: bool, autocommit: bool) -> Iterator[Cycle]:
    if pre_ping and not autocommit:
        engine: Engine = create_engine_for(url)  # the service's engine, as configured
    else:
        engine = create_engine(
            url,
            pool_pre_ping=pre_ping,
            isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        )
    db = session_factory(engine)

    def unit(work: Callable[[SqlLeaseRepository], Any]) -> Any:
        with db.begin() as session:
            return work(lease_repository(session))

    cycle = _repository_cycle(unit, unit)

    try:
        yield cycle
    finally:
        engine.dispose()


def _grant_params(statements: LeaseStatements, user: str, lease: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return statements.grant.bind(
        {
            SENTINEL_USER: user,
            SENTINEL_LEASE: lease,
            SENTINEL_HOLDER: "bench",
            SENTINEL_NOW: now,
            SENTINEL_EXPIRES: now + TTL,
        }
    )


def _release_params(statements: LeaseStatements, lease: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    # The caller too: a release matches only a lease its own caller obtained.
    return statements.release.bind(
        {SENTINEL_LEASE: lease, SENTINEL_HOLDER: "bench", SENTINEL_NOW: now, SENTINEL_SYNCED: now}
    )


def _listening(*_args: Any) -> None:
    """A cursor-event listener that does nothing (see core_cycle)."""


@contextmanager
def core_cycle(url: str, *, autocommit: bool) -> Iterator[Cycle]:
    engine = create_engine(
        url, pool_pre_ping=False, isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED"
    )

    # The lease statements run straight on psycopg (auth_service.storage.driver_statement)
    # unless something listens to the engine's cursor events: a listener that does nothing
    # keeps them on SQLAlchemy Core's execution path, which is what this variant measures.
    event.listen(engine, "before_cursor_execute", _listening)

    def unit(work: Callable[[SqlLeaseRepository], Any]) -> Any:
        with engine.begin() as connection:
            return work(lease_repository(cast(Session, connection)))

    cycle = _repository_cycle(unit, unit)

    try:
        yield cycle
    finally:
        engine.dispose()


@contextmanager
def service_cycle(url: str, *, trail: bool) -> Iterator[Cycle]:
    """The service's path today (auth_service.storage.unit_of_work): the repository on Core
    connections of the service's engine, the statements straight on psycopg
    (driver_statement), the grant in BEGIN/COMMIT and the release in autocommit; `trail`:
    each statement also writes its audit event and change-log entry, as the lease RPCs do."""
    engine = create_engine_for(url)

    def in_transaction(work: Callable[[SqlLeaseRepository], Any]) -> Any:
        with engine.begin() as connection:
            return work(lease_repository(cast(Session, connection)))

    def in_autocommit(work: Callable[[SqlLeaseRepository], Any]) -> Any:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            return work(lease_repository(cast(Session, connection)))

    cycle = _repository_cycle(in_transaction, in_autocommit, trail=trail)

    try:
        yield cycle
    finally:
        engine.dispose()


@contextmanager
def driver_sql_cycle(url: str, statements: LeaseStatements) -> Iterator[Cycle]:
    engine = create_engine(url, pool_pre_ping=False, isolation_level="AUTOCOMMIT")

    def run(sql: str, params: dict[str, Any]) -> Any:
        with engine.connect() as connection:
            return connection.exec_driver_sql(sql, params).first()

    cycle = _sql_cycle(run, statements)

    try:
        yield cycle
    finally:
        engine.dispose()


@contextmanager
def psycopg_cycle(
    conninfo: str, statements: LeaseStatements, *, autocommit: bool
) -> Iterator[Cycle]:
    connection = psycopg.connect(conninfo, autocommit=autocommit)

    def run(sql: str, params: dict[str, Any]) -> Any:
        row = connection.execute(sql.encode(), params).fetchone()
        if not autocommit:
            connection.commit()
        return row

    cycle = _sql_cycle(run, statements)

    try:
        yield cycle
    finally:
        connection.close()


def time_cycles(
    cycle: Cycle, duration: float, first_user: int, database_name: str
) -> tuple[float, float, float, int]:
    """(wall, Python CPU, PostgreSQL CPU) in µs per statement and the next user; 0.5 s of
    warm-up first."""
    user = first_user
    warm_until = time.perf_counter() + 0.5
    while time.perf_counter() < warm_until:
        cycle(user_id(user % USERS))
        user += 1
    cycles = 0
    before = CpuSample.take((), database_name)
    wall, cpu = time.perf_counter(), time.process_time()
    end = wall + duration
    while time.perf_counter() < end:
        cycle(user_id(user % USERS))
        user += 1
        cycles += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    postgres = before.until(CpuSample.take((), database_name)).postgres
    statements = 2 * cycles
    return wall / statements * 1e6, cpu / statements * 1e6, postgres / statements * 1e6, user


def run(args: argparse.Namespace, report: Report) -> None:
    with Workdir() as workdir:
        tree = ServiceTree(workdir, None)
        report.note(f"repository code: {tree.describe()}")
        with service_stack(workdir) as (database, credentials, _service):
            now = datetime.now(UTC)
            seed_sessions(
                database, credentials.keyring, range(USERS), lambda _i: now - timedelta(hours=2)
            )
            database.vacuum_analyze()
            measure_variants(args, report, database)


def measure_variants(args: argparse.Namespace, report: Report, database: PostgresDatabase) -> None:
    statements = capture_lease_statements(database.url)
    url, conninfo = database.url, database.conninfo
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("orm_tx_preping", lambda: orm_cycle(url, pre_ping=True, autocommit=False)),
        ("orm_tx", lambda: orm_cycle(url, pre_ping=False, autocommit=False)),
        ("orm_autocommit", lambda: orm_cycle(url, pre_ping=False, autocommit=True)),
        ("core_tx", lambda: core_cycle(url, autocommit=False)),
        ("core_autocommit", lambda: core_cycle(url, autocommit=True)),
        ("driver_sql_autocommit", lambda: driver_sql_cycle(url, statements)),
        ("psycopg_tx", lambda: psycopg_cycle(conninfo, statements, autocommit=False)),
        ("psycopg_autocommit", lambda: psycopg_cycle(conninfo, statements, autocommit=True)),
        ("service_trail", lambda: service_cycle(url, trail=True)),
        ("service_no_trail", lambda: service_cycle(url, trail=False)),
    ]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in variants}
    user = 0
    # Rounds interleave the variants, so a burst of load elsewhere hits them all alike.
    for round_number in range(args.rounds):
        log(f"round {round_number + 1}/{args.rounds}")
        for name, make in variants:
            with make() as cycle:
                wall, cpu, postgres, user = time_cycles(cycle, args.duration, user, database.name)
            results[name].append((wall, cpu, postgres))
    for name, _ in variants:
        for index, what in enumerate(("wall", "python_cpu", "postgres_cpu")):
            values = [result[index] for result in results[name]]
            report.figure(f"{name}_{what}_per_statement", statistics.median(values), "us")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.statement_costs")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per variant/round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 1.0, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    run(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
