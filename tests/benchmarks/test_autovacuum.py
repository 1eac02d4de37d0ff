"""benchmarks.autovacuum: the stand-in vacuums what autovacuum's thresholds say is due, and
leaves the rest alone."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from benchmarks.autovacuum import AutovacuumStandIn
from benchmarks.harness import conninfo_of
from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.fixture
def conninfo(pg_server: PostgresServer) -> Iterator[str]:
    url = pg_server.create_database()
    try:
        yield conninfo_of(url)
    finally:
        pg_server.drop_database(url)


def _dead_tuples(connection: psycopg.Connection, table: str) -> int:
    connection.execute("SELECT pg_stat_clear_snapshot()")
    row = connection.execute(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", [table]
    ).fetchone()
    assert row is not None
    return int(row[0])


def _wait(predicate: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_tables_past_the_threshold_are_vacuumed_and_the_others_are_not(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as connection:
        # Never vacuumed tables count as 0 rows for the daemon; after this, 1000 rows each.
        for table in (sql.Identifier("churned"), sql.Identifier("quiet")):
            for statement in (
                "CREATE TABLE {} (id int PRIMARY KEY, n int)",
                "INSERT INTO {} SELECT i, 0 FROM generate_series(1, 1000) i",
                "VACUUM (ANALYZE) {}",
            ):
                connection.execute(sql.SQL(statement).format(table))
        # Past 50 + 0.2 x 1000 dead tuples (the defaults) in one, under it in the other.
        for _ in range(3):
            connection.execute("UPDATE churned SET n = n + 1 WHERE id <= 200")
        connection.execute("UPDATE quiet SET n = n + 1 WHERE id <= 20")
        # (Page pruning removes some of the 600 before the statistics count them.)
        _wait(lambda: _dead_tuples(connection, "churned") > 300)
        _wait(lambda: _dead_tuples(connection, "quiet") > 0)

        with AutovacuumStandIn(conninfo, naptime_seconds=0.2, always=True) as stand_in:
            _wait(lambda: _dead_tuples(connection, "churned") == 0)
            time.sleep(0.5)  # a few more rounds: the quiet table stays as it is

        assert stand_in.work.vacuums >= 1
        assert _dead_tuples(connection, "quiet") > 0
        counts = connection.execute(
            "SELECT relname, vacuum_count FROM pg_stat_user_tables ORDER BY relname"
        ).fetchall()
        # The one VACUUM (ANALYZE) each table had above, plus the stand-in's on the churned one.
        assert dict(counts) == {"churned": 2, "quiet": 1}
