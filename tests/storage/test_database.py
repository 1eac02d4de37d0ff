"""Engines, sessions and column types on both backends (auth_service.storage.database)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, select, text
from sqlalchemy.exc import IntegrityError, InternalError, StatementError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from auth_service.domain.models import SessionState
from auth_service.storage.database import (
    POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    POSTGRES_STATEMENT_TIMEOUT_MS,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    create_engine_for,
    database_is_reachable,
)
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge

T0 = datetime(2026, 3, 29, 0, 30, 15, 123456, tzinfo=UTC)


def _state(user_id: str, **values: object) -> GarminAuthenticationState:
    row = GarminAuthenticationState(
        user_id=user_id, state=SessionState.ACTIVE, created_at=T0, updated_at=T0
    )
    for name, value in values.items():
        setattr(row, name, value)
    return row


def _challenge(user_id: str) -> GarminMfaChallenge:
    return GarminMfaChallenge(
        challenge_id_sha256=user_id.ljust(64, "0")[:64],
        user_id=user_id,
        pending_ciphertext=b"blob",
        mfa_method="email",
        expires_at=T0,
        created_at=T0,
    )


# --- UTCDateTime -----------------------------------------------------------------------------


def test_utc_datetime_round_trip(db_sessionmaker: sessionmaker[Session]) -> None:
    berlin_summer = timezone(timedelta(hours=2))
    local = datetime(2026, 3, 29, 2, 30, 15, 123456, tzinfo=berlin_summer)
    with db_sessionmaker.begin() as session:
        session.add(_state("alice", lease_expires_at=local, last_synced_at=None))

    with db_sessionmaker() as session:
        row = session.get_one(GarminAuthenticationState, "alice")
        assert row.lease_expires_at == local
        assert row.lease_expires_at is not None
        assert row.lease_expires_at.tzinfo is UTC
        assert (row.lease_expires_at.hour, row.lease_expires_at.minute) == (0, 30)
        assert row.created_at == T0
        assert row.created_at.tzinfo is UTC
        assert row.last_synced_at is None


def test_utc_datetime_compares_in_sql(db_sessionmaker: sessionmaker[Session]) -> None:
    # Values given in different zones must order by instant, SQLite included.
    plus_five = timezone(timedelta(hours=5))
    with db_sessionmaker.begin() as session:
        session.add(_state("early", lease_expires_at=datetime(2026, 1, 1, 4, 0, tzinfo=plus_five)))
        session.add(_state("late", lease_expires_at=datetime(2026, 1, 1, 0, 0, tzinfo=UTC)))

    with db_sessionmaker() as session:
        cutoff = datetime(2025, 12, 31, 23, 30, tzinfo=UTC)
        ordered = session.scalars(
            select(GarminAuthenticationState.user_id).order_by(
                GarminAuthenticationState.lease_expires_at
            )
        ).all()
        after_cutoff = session.scalars(
            select(GarminAuthenticationState.user_id).where(
                GarminAuthenticationState.lease_expires_at > cutoff
            )
        ).all()
    assert ordered == ["early", "late"]
    assert after_cutoff == ["late"]


def test_utc_datetime_rejects_naive_values(db_sessionmaker: sessionmaker[Session]) -> None:
    naive = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the test
    with pytest.raises(StatementError, match="naive datetime"), db_sessionmaker.begin() as session:
        session.add(_state("alice", lease_expires_at=naive))


# --- constraints -------------------------------------------------------------------------------


def test_foreign_keys_are_enforced(db_sessionmaker: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError), db_sessionmaker.begin() as session:
        session.add(_challenge("nobody"))


def test_deleting_a_user_row_cascades_to_its_challenge(
    db_sessionmaker: sessionmaker[Session],
) -> None:
    with db_sessionmaker.begin() as session:
        session.add(_state("alice"))
        session.flush()
        session.add(_challenge("alice"))
    with db_sessionmaker.begin() as session:
        session.execute(text("DELETE FROM garmin_authentication_state WHERE user_id = 'alice'"))
    with db_sessionmaker() as session:
        assert session.scalars(select(GarminMfaChallenge)).all() == []


def test_session_state_is_checked_by_the_database(engine: Engine) -> None:
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO garmin_authentication_state (user_id, state, session_version, "
                "fencing_token, created_at, updated_at) VALUES ('alice', 'BOGUS', 0, 0, "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            ),
        )


def test_lease_ids_are_unique(db_sessionmaker: sessionmaker[Session]) -> None:
    with db_sessionmaker() as session:
        session.add_all([_state("alice", lease_id="lease-1"), _state("bob", lease_id="lease-1")])
        with pytest.raises(IntegrityError):
            session.commit()


# --- sessions and engines ----------------------------------------------------------------------


def test_objects_stay_readable_after_commit(db_sessionmaker: sessionmaker[Session]) -> None:
    session = db_sessionmaker()
    with session.begin():
        row = _state("alice")
        session.add(row)
    session.close()

    assert row.user_id == "alice"  # expire_on_commit=False: no reload on a closed session
    assert row.state is SessionState.ACTIVE


def test_database_is_reachable(engine: Engine) -> None:
    assert database_is_reachable(engine)


def test_unreachable_sqlite_database(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'missing-dir' / 'db.sqlite3'}")
    try:
        assert not database_is_reachable(engine)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_unreachable_postgres_database(caplog: pytest.LogCaptureFixture) -> None:
    # Port 9 (discard) refuses at once; the password must never reach the log.
    engine = create_engine_for("postgresql+psycopg://someone:hunter2-pw@127.0.0.1:9/none")
    try:
        assert not database_is_reachable(engine)
    finally:
        engine.dispose()
    assert "hunter2-pw" not in caplog.text
    assert "127.0.0.1" in caplog.text


def test_concurrent_read_modify_write_loses_no_update(engine: Engine) -> None:
    """Several threads increment one counter; every increment must survive.

    PostgreSQL serialises them on the row lock (FOR UPDATE); SQLite on BEGIN IMMEDIATE (where
    FOR UPDATE is a no-op). Without BEGIN IMMEDIATE SQLite would fail with "database is locked".
    """
    with engine.begin() as connection:
        connection.execute(
            insert(GarminAuthenticationState).values(
                user_id="alice",
                state=SessionState.ACTIVE,
                session_version=0,
                fencing_token=0,
                created_at=T0,
                updated_at=T0,
            )
        )
    threads, increments = 4, 25
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(increments):
                _increment_fencing_token(engine, "alice")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    with engine.connect() as connection:
        token = connection.scalar(select(GarminAuthenticationState.fencing_token))
    assert token == threads * increments


def _increment_fencing_token(engine: Engine, user_id: str) -> None:
    with Session(engine) as session, session.begin():
        row = session.execute(
            select(GarminAuthenticationState)
            .where(GarminAuthenticationState.user_id == user_id)
            .with_for_update()
        ).scalar_one()
        row.fencing_token += 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_connection_settings(engine: Engine) -> None:
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        busy_ms = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert busy_ms == int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_write_transactions_take_the_write_lock_at_begin(engine: Engine) -> None:
    # The write lock is taken at BEGIN, before anything is read: a second writer waits there
    # (up to busy_timeout) instead of failing half-way through a read-modify-write.
    path = engine.url.database
    assert path is not None
    with engine.begin():
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            # Readers are not blocked (WAL), and neither are our read-only units of work.
            assert other.execute("SELECT count(*) FROM garmin_authentication_state").fetchone() == (
                0,
            )
        finally:
            other.close()
        reader = engine.execution_options(sqlite_begin="DEFERRED")
        with reader.connect() as connection:
            assert connection.execute(select(GarminAuthenticationState.user_id)).all() == []


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_rejects_an_unknown_begin_mode(engine: Engine) -> None:
    with pytest.raises(ValueError, match="sqlite_begin"):  # noqa: SIM117
        with engine.execution_options(sqlite_begin="SOMETIMES").connect() as connection:
            connection.execute(text("SELECT 1"))


def test_postgres_connection_settings(pg_database_url: str) -> None:
    engine = create_engine_for(pg_database_url, pool_size=3, max_overflow=2)
    try:
        with engine.connect() as connection:
            timeout = connection.exec_driver_sql("SHOW statement_timeout").scalar()
            application = connection.exec_driver_sql("SHOW application_name").scalar()
        assert engine.dialect.driver == "psycopg"
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
    finally:
        engine.dispose()
    assert timeout == f"{POSTGRES_STATEMENT_TIMEOUT_MS // 1000}s"
    assert application == "garmin-auth"


@contextmanager
def database_default_time_zone(database_url: str, time_zone: str) -> Iterator[None]:
    """New connections to the database at `database_url` start in `time_zone` unless they set
    their own (the database's `timezone` setting, as a role's or the server's would)."""
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            name = connection.exec_driver_sql("SELECT current_database()").scalar_one()
            database = connection.dialect.identifier_preparer.quote(name)
            connection.exec_driver_sql(f"ALTER DATABASE {database} SET timezone = '{time_zone}'")
            try:
                yield
            finally:
                connection.exec_driver_sql(f"ALTER DATABASE {database} RESET timezone")
    finally:
        admin.dispose()


def test_postgres_connections_read_times_in_utc_whatever_the_databases_time_zone(
    pg_database_url: str,
) -> None:
    """Before: a connection started in the time zone its database, role or server named
    (PostgreSQL's `timezone`, set from the host at initdb), and psycopg reads a timestamptz in
    it: 9999-12-31T23:59:59Z is year 10000 in Tokyo, past what a Python datetime holds
    (psycopg DataError, answered INTERNAL). Now every connection is in UTC."""
    with database_default_time_zone(pg_database_url, "Asia/Tokyo"):
        engine = create_engine_for(pg_database_url)
        try:
            with engine.connect() as connection:
                zone = connection.exec_driver_sql("SHOW TimeZone").scalar()
                far = connection.exec_driver_sql("SELECT timestamptz '9999-12-31 23:59:59Z'")
                far_value = far.scalar()
        finally:
            engine.dispose()
    assert zone == "UTC"
    assert far_value == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_postgres_connections_stay_in_utc_under_pgtz(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: libpq sends a `PGTZ` from the service's environment as a start-up setting of
    its own, which the server applies after the URL's `-c timezone=UTC`; the far timestamp
    below then read as year 10000 (psycopg DataError, answered INTERNAL). Now a connection is
    put back in UTC when `PGTZ` is set."""
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    engine = create_engine_for(pg_database_url)
    try:
        for _ in range(2):  # a fresh connection, then one from the pool
            with engine.connect() as connection:
                zone = connection.exec_driver_sql("SHOW TimeZone").scalar()
                far = connection.exec_driver_sql("SELECT timestamptz '9999-12-31 23:59:59Z'")
                far_value = far.scalar()
            assert zone == "UTC"
            assert far_value == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    finally:
        engine.dispose()


def test_postgres_pool_hands_out_the_connection_returned_last(pg_database_url: str) -> None:
    """Light load is served by the same few connections (warm backends, no ping after idle),
    not by every pooled connection in turn."""
    engine = create_engine_for(pg_database_url, pool_size=4)
    try:
        held = [engine.connect() for _ in range(4)]
        backends = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in held]
        for connection in held:
            connection.close()
        served = []
        for _ in range(3):
            with engine.connect() as connection:
                served.append(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar())
    finally:
        engine.dispose()
    assert served == [backends[-1]] * 3


def test_postgres_statement_timeout_cancels_long_statements(pg_database_url: str) -> None:
    engine = create_engine_for(pg_database_url, statement_timeout_ms=100)
    try:
        with pytest.raises(Exception, match="statement timeout"), engine.connect() as connection:
            connection.execute(text("SELECT pg_sleep(2)"))
    finally:
        engine.dispose()


def test_unsupported_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        create_engine_for("mysql://localhost/db")


def test_postgres_ends_a_transaction_left_idle(pg_database_url: str) -> None:
    """A replica frozen inside a transaction (SIGSTOP, a stalled VM, a thread stuck between
    two statements) no longer holds its row locks and advisory locks until TCP notices:
    PostgreSQL ends the session once the transaction has been idle past the limit. Before,
    nothing did (every other replica's statement on those rows waited out its 30 s timeout,
    and the change log's numbering stopped on every replica)."""
    engine = create_engine_for(pg_database_url, idle_in_transaction_timeout_ms=300)
    try:
        with engine.connect() as connection:
            setting = connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout")
            assert setting.scalar() == "300ms"
            connection.exec_driver_sql("SELECT 1")  # the transaction is open, then idle
            time.sleep(1.0)
            with pytest.raises(InternalError, match="idle-in-transaction"):
                connection.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()


def test_postgres_idle_transactions_are_ended_by_default(pg_database_url: str) -> None:
    assert POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS == 60_000
    engine = create_engine_for(pg_database_url)
    try:
        with engine.connect() as connection:
            setting = connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout")
            assert setting.scalar() == "1min"  # POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS
    finally:
        engine.dispose()
