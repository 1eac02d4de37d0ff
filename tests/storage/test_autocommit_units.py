"""PostgreSQL: a single-write unit runs on a pooled connection switched into autocommit on
the driver (storage.unit_of_work._autocommitted), and the pool never hands that connection
to a transaction still in autocommit, where each of its statements would commit on its own
and a failed use case would leave half its writes behind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from auth_service.crypto import Keyring
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore

pytestmark = pytest.mark.postgres


class _Abort(Exception):
    """Raised inside a unit to make it roll back."""


@pytest.fixture
def one_connection(pg_database_url: str) -> Iterator[Engine]:
    """The service's engine with a pool of one: every unit runs on the same connection."""
    engine = create_engine_for(pg_database_url, pool_size=1)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE autocommit_probe (n integer NOT NULL)")
    yield engine
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE autocommit_probe")
    engine.dispose()


def _store(engine: Engine) -> SqlStore:
    return SqlStore(
        session_factory(engine), SecretBox(Keyring.parse(Keyring.generate_key_value("test")))
    )


def _connection_of(unit: Any) -> Connection:
    connection = unit._connection
    assert isinstance(connection, Connection)
    return connection


def _driver(connection: Connection) -> Any:
    """The psycopg connection under the pooled one."""
    return connection.connection.driver_connection


def _backend_pid(connection: Connection) -> int:
    return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _probe_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT count(*) FROM autocommit_probe").scalar_one())


def _insert_then_fail(store: SqlStore) -> int:
    """A transaction that inserts a row and then fails; the backend it ran on."""
    with contextlib.suppress(_Abort), store.transaction() as unit:
        connection = _connection_of(unit)
        pid = _backend_pid(connection)
        connection.exec_driver_sql("INSERT INTO autocommit_probe VALUES (1)")
        raise _Abort
    return pid


def test_a_transaction_after_a_single_write_on_the_same_connection_is_whole(
    one_connection: Engine,
) -> None:
    store = _store(one_connection)
    with store.single_write() as unit:
        connection = _connection_of(unit)
        single_write_pid = _backend_pid(connection)
        assert _driver(connection).autocommit is True
    assert _insert_then_fail(store) == single_write_pid  # the same pooled connection
    assert _probe_rows(one_connection) == 0


def test_a_single_write_whose_connection_died_leaves_no_autocommitted_connection(
    one_connection: Engine, pg_database_url: str
) -> None:
    """The switch back fails on a dead connection; the connection is dropped, and the next
    unit gets a new one, in a transaction."""
    store = _store(one_connection)
    with store.single_write() as unit:
        connection = _connection_of(unit)
        dead_pid = _backend_pid(connection)
        killer = create_engine_for(pg_database_url, pool_size=1)
        try:
            with killer.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dead_pid})
        finally:
            killer.dispose()
        with pytest.raises(DBAPIError):
            connection.exec_driver_sql("SELECT 1")
    assert _insert_then_fail(store) != dead_pid
    assert _probe_rows(one_connection) == 0


def test_the_pool_never_hands_out_a_connection_left_in_autocommit(one_connection: Engine) -> None:
    """Before: a connection put back in autocommit (a bug past the unit's own switch) was
    handed to the next transaction, which then committed statement by statement: the
    INSERT below outlived the rollback. Now the checkout replaces it."""
    with one_connection.connect() as connection:
        left_pid = _backend_pid(connection)
        connection.rollback()
        _driver(connection).autocommit = True
    assert _insert_then_fail(_store(one_connection)) != left_pid
    assert _probe_rows(one_connection) == 0


def test_a_single_write_left_inside_a_transaction_drops_its_connection(
    one_connection: Engine,
) -> None:
    """A unit whose connection is inside a transaction when it ends (an explicit BEGIN) cannot
    leave autocommit: the connection is dropped, its transaction with it, and the next unit
    gets a new one. Found by review (s28)."""
    store = _store(one_connection)
    with store.single_write() as unit:
        connection = _connection_of(unit)
        pid = _backend_pid(connection)
        connection.exec_driver_sql("BEGIN")
        connection.exec_driver_sql("INSERT INTO autocommit_probe VALUES (1)")
    assert _probe_rows(one_connection) == 0
    assert _insert_then_fail(store) != pid
    assert _probe_rows(one_connection) == 0
