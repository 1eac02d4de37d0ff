"""A PostgreSQL that refuses writes (a failover left the pool on a node that is now a hot
standby, or an operator set default_transaction_read_only for maintenance) is a database that
cannot serve the call: it answers UNAVAILABLE DATABASE_UNAVAILABLE (README's error table), and
readiness goes NOT_SERVING, so the replica is taken out of the Service's endpoints.

Before, psycopg's ReadOnlySqlTransaction (SQLSTATE 25006, an InternalError) answered INTERNAL
with a traceback, and readiness (SELECT 1, which a standby answers) stayed SERVING. Found by a
read-only review."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from auth_service.storage.schema import upgrade_to_head
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.database import PostgresServer
from tests.fixtures.servers import Replica, expect_failure
from tests.service.test_health import NOT_SERVING, SERVING, status


@pytest.fixture
def database_url(pg_server: PostgresServer) -> Iterator[str]:
    # A database of its own: the test makes it read-only.
    url = pg_server.create_database()
    try:
        upgrade_to_head(url)
        yield url
    finally:
        _read_only(pg_server, url, on=False)
        pg_server.drop_database(url)


def _read_only(pg_server: PostgresServer, url: str, *, on: bool) -> None:
    name = make_url(url).database
    setting = (
        "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    )
    with pg_server.engine.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" {setting}'))
        if on:
            # The replica's pooled connections are dropped; new ones start read-only.
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )


def test_a_read_only_database_answers_database_unavailable_not_internal(
    service: Replica, pg_server: PostgresServer, database_url: str
) -> None:
    request = pb.LeaseNextSessionRequest(holder="w")
    service.call("LeaseNextSession", request, "worker")  # writes fine while writable
    _read_only(pg_server, database_url, on=True)
    # Past the pool's idle ping (1 s): the dead connections are replaced, not used.
    time.sleep(1.5)
    codes = []
    for _ in range(3):
        failure = expect_failure(lambda: service.call("LeaseNextSession", request, "worker"))
        codes.append((failure.code, failure.reason))
    assert all(code == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE") for code in codes), (
        f"a database refusing writes (ReadOnlySqlTransaction) answered {codes}, not "
        "UNAVAILABLE DATABASE_UNAVAILABLE"
    )
    # Readiness follows (the probe looks every couple of seconds).
    deadline = time.monotonic() + 15
    while status(service.target, "readiness") != NOT_SERVING:
        assert time.monotonic() < deadline, "readiness stayed SERVING on a read-only database"
        time.sleep(0.2)
    assert status(service.target, "liveness") == SERVING
