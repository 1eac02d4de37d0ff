"""The lease statements run straight on psycopg fail on a dead connection exactly as
SQLAlchemy's execution does: after a disconnect the whole pool is replaced (a database
restart or failover killed every connection), so only the call that met the restart fails.
auth_service/storage/database.py relies on it. Before, the direct path
(driver_statement._wrapped) invalidated only its own connection, so every other pooled
connection returned less than POSTGRES_PING_AFTER_IDLE_SECONDS ago failed one more lease RPC
(UNAVAILABLE)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from auth_service.crypto import Keyring
from auth_service.storage.audit_repository import SqlAuditRepository
from auth_service.storage.database import create_engine_for
from auth_service.storage.lease_repository import SqlLeaseRepository
from auth_service.storage.secrets import SecretBox
from auth_service.storage.session_repository import SqlSessionRepository

pytestmark = pytest.mark.postgres

POOLED = 4


@pytest.fixture
def pg_engine(pg_database_url: str) -> Iterator[Engine]:
    engine = create_engine_for(pg_database_url)
    yield engine
    engine.dispose()


def _leases(connection: Connection) -> SqlLeaseRepository:
    box = SecretBox(Keyring.parse(Keyring.generate_key_value("test")))
    return SqlLeaseRepository(
        connection, SqlSessionRepository(connection, box), SqlAuditRepository(connection)
    )


def _lease_lookup(connection: Connection) -> str:
    """One lease statement (the lookup every holder call starts with)."""
    try:
        _leases(connection).find("alice")
    except DBAPIError as exc:
        return "UNAVAILABLE" if exc.connection_invalidated else f"other: {exc}"
    return "ok"


def _restart_kills_every_connection(engine: Engine, pg_database_url: str) -> None:
    """What a database restart or failover does to the pool: every backend is gone."""
    database = make_url(pg_database_url).database
    with ExitStack() as stack:
        warm = [stack.enter_context(engine.connect()) for _ in range(POOLED)]
        for connection in warm:
            connection.execute(text("SELECT 1"))
            connection.commit()
    killer = create_engine_for(pg_database_url)
    with killer.connect() as admin:
        admin.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        )
        admin.commit()
    killer.dispose()
    time.sleep(0.1)  # well below the 1 s after which a pooled connection is pinged


def _after_restart(engine: Engine, pg_database_url: str) -> tuple[str, list[str]]:
    _restart_kills_every_connection(engine, pg_database_url)
    with engine.connect() as connection:
        first = _lease_lookup(connection)  # the call that meets the restart
    with ExitStack() as stack:
        busy = [stack.enter_context(engine.connect()) for _ in range(POOLED)]
        then = [_lease_lookup(connection) for connection in busy]
    return first, then


def test_through_sqlalchemy_one_call_meets_the_restart(
    pg_engine: Engine, pg_database_url: str
) -> None:
    """The reference: what the same statement does on SQLAlchemy's execution path."""

    def listen(*_args: Any) -> None:
        return None

    event.listen(pg_engine, "before_cursor_execute", listen)
    first, then = _after_restart(pg_engine, pg_database_url)
    assert first == "UNAVAILABLE"
    assert then == ["ok"] * POOLED


def test_direct_path_replaces_every_pooled_connection_after_a_disconnect(
    pg_engine: Engine, pg_database_url: str
) -> None:
    first, then = _after_restart(pg_engine, pg_database_url)
    assert first == "UNAVAILABLE"
    # Expected as on SQLAlchemy's path: the pool was invalidated, every later call works.
    assert then == ["ok"] * POOLED
