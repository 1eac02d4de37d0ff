"""benchmarks/lease_instructions_child.py, the loop benchmarks.lease_instructions counts under
callgrind, runs against the current service code (without valgrind here: the count itself
is the benchmark's business) and leaves every seeded session released."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from benchmarks.harness import Credentials, PostgresDatabase, seed_sessions, service_environment
from benchmarks.lease_instructions import CHILD
from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

USERS = 5


def test_the_counted_loop_leases_and_releases(
    pg_server: PostgresServer, pg_admin_url: str, tmp_path: Path
) -> None:
    with PostgresDatabase(pg_admin_url) as database:
        credentials = Credentials.create(tmp_path)
        database.migrate(
            service_environment(database, credentials, upstream_url="http://127.0.0.1:9", port=9)
        )
        seed_sessions(database, credentials.keyring, range(USERS), lambda _index: None)
        command = [sys.executable, str(CHILD), "3", database.url, credentials.keyring_value]
        run = subprocess.run(
            [*command, str(USERS)], capture_output=True, text=True, timeout=100, check=False
        )
        assert run.returncode == 0, run.stderr[-3000:]
        with psycopg.connect(database.conninfo) as connection:
            events = connection.execute(
                "SELECT rpc, count(*) FROM garmin_audit_event GROUP BY rpc ORDER BY rpc"
            ).fetchall()
            held = connection.execute(
                "SELECT count(*) FROM garmin_authentication_state WHERE lease_holder IS NOT NULL"
                " AND lease_expires_at > now()"
            ).fetchone()
    # 20 warm-up pairs and 3 measured ones, each recorded.
    assert events == [("LeaseSession", 23), ("ReleaseLease", 23)]
    assert held == (0,)
