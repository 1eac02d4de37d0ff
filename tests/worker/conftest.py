"""Fixtures of the worker tests."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from sync_worker.postgres_sink import PostgresSink, libpq_url
from tests.fixtures.database import PostgresServer


@pytest.fixture(scope="session")
def sink_database(pg_server: PostgresServer) -> Iterator[str]:
    """The worker's own PostgreSQL database (never the auth service's), schema created once
    per run: creating and dropping a database costs seconds."""
    url = pg_server.create_database()
    PostgresSink(url).init_schema()
    try:
        yield libpq_url(url)
    finally:
        pg_server.drop_database(url)


@pytest.fixture
def sink_url(sink_database: str) -> str:
    """The sink database, emptied."""
    with psycopg.connect(sink_database) as connection:
        connection.execute("TRUNCATE garmin_activity, garmin_sync_fence")
    return sink_database
