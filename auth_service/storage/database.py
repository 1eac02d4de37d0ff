"""Engines and sessions for the two supported backends: PostgreSQL (psycopg 3) and SQLite.

How concurrent writers are serialised
-------------------------------------
PostgreSQL: READ COMMITTED plus row locks. A read-modify-write must lock what it reads
(`select(...).with_for_update()`); PostgreSQL then queues the second writer behind the first.

SQLite: one writer at a time for the whole file. Python's sqlite3 driver normally opens
transactions lazily (BEGIN DEFERRED, and only before DML), so two threads that both read
and then write each hold a read snapshot and the second one's write fails at once with
"database is locked" (SQLITE_BUSY_SNAPSHOT ignores busy_timeout). We therefore take over
BEGIN ourselves and issue `BEGIN IMMEDIATE`, which takes the write lock up front: a second
writer waits (up to busy_timeout) at BEGIN instead of failing half-way, and every
transaction sees the latest committed data. `with_for_update()` is a no-op on SQLite, so
repository code written for PostgreSQL is correct here too. WAL keeps readers that are not
inside a transaction unblocked by the writer.

A purely read-only unit of work may opt out of the write lock with
`engine.execution_options(sqlite_begin="DEFERRED")` (see SQLITE_BEGIN_OPTION); the health
check does, so it never queues behind a long write.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from auth_service.config import redacted_database_url
from garmin_client.logging_setup import redact
from garmin_client.url_secrets import scrubbed

log = logging.getLogger(__name__)

# Execution option read by our SQLite BEGIN hook: "IMMEDIATE" (default) or "DEFERRED".
SQLITE_BEGIN_OPTION = "sqlite_begin"
_SQLITE_BEGIN_MODES = frozenset({"IMMEDIATE", "DEFERRED", "EXCLUSIVE"})

# Bound values (ciphertexts, hashes, user ids, lease ids) stay out of the text of a failed
# statement's exception, which reaches logs and check-config lines.
HIDE_PARAMETERS = True

# How long a SQLite writer waits for the file lock before "database is locked".
SQLITE_BUSY_TIMEOUT_SECONDS = 15.0

# PostgreSQL limits. A statement running longer than this is a bug or a stuck lock; failing
# it frees the pool slot and the gRPC call reports an error instead of hanging.
POSTGRES_CONNECT_TIMEOUT_SECONDS = 5
POSTGRES_STATEMENT_TIMEOUT_MS = 30_000
# A transaction idle this long between statements is ended by PostgreSQL (the session with
# it): our transactions never wait on anything but the database (never on Garmin), so only a
# replica frozen mid-transaction (SIGSTOP, a stalled VM) is this slow, and it would otherwise
# hold its row and advisory locks until TCP gives up on it: every other replica's statement on
# those rows waiting out its timeout, the change log's numbering stopped everywhere.
POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
# A fixed pool, no overflow: an overflow connection is closed as soon as it is returned, so
# under load the service opened and closed dozens of connections a second (each costs
# PostgreSQL a process). Transactions never span a call to Garmin, so 16 connections serve
# the 32 gRPC threads; a thread that finds none free waits for one (pool timeout).
POSTGRES_POOL_SIZE = 16
POSTGRES_MAX_OVERFLOW = 0
POSTGRES_POOL_TIMEOUT_SECONDS = 10.0
# Checkout takes the connection returned last (LIFO): below full load the same few
# connections serve every call, so their backends stay warm and none idles past the ping
# threshold; in turn (FIFO), each of the 16 idles 16 times as long between uses. A one-off
# loop of one-row UPDATEs, 2 threads: PostgreSQL CPU per statement 0.22-0.25 -> 0.18-0.20 ms
# at 400/s and 0.46-0.49 -> 0.31-0.33 ms at 20/s; at 5/s, 54 of 60 checkouts pinged -> 1.
# Recycle before typical load-balancer / server idle limits cut connections.
POSTGRES_POOL_RECYCLE_SECONDS = 1800
# A connection that sat in the pool longer than this is pinged before use (a database restart
# or failover leaves dead ones behind). One returned sooner is not: under load that is every
# checkout, and a ping per transaction cost a round trip and 3% of the service's CPU. What a
# restart kills in the meantime fails its statement, as a call in flight does anyway, and
# SQLAlchemy then replaces every pooled connection.
POSTGRES_PING_AFTER_IDLE_SECONDS = 1.0


def create_engine_for(
    url: str,
    *,
    pool_size: int = POSTGRES_POOL_SIZE,
    max_overflow: int = POSTGRES_MAX_OVERFLOW,
    statement_timeout_ms: int = POSTGRES_STATEMENT_TIMEOUT_MS,
    idle_in_transaction_timeout_ms: int = POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS,
) -> Engine:
    """An Engine configured for this service; `url` is a postgresql+psycopg or sqlite URL.

    The pool arguments only apply to PostgreSQL; size them to the gRPC worker count.
    `statement_timeout_ms=0` disables the PostgreSQL statement timeout, and
    `idle_in_transaction_timeout_ms=0` the end of transactions left idle.
    """
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(url)
    elif backend == "postgresql":
        engine = _postgres_engine(
            url, pool_size, max_overflow, statement_timeout_ms, idle_in_transaction_timeout_ms
        )
    else:
        raise ValueError(f"unsupported database backend {backend!r}")
    log.debug("database engine created for %s", redacted_database_url(url))
    return engine


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(
        url,
        hide_parameters=HIDE_PARAMETERS,
        # gRPC serves each call on a pool thread; SQLAlchemy's pool hands a connection to
        # one thread at a time, so sharing across threads is safe.
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
    )
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Stop the driver from issuing its own (deferred, DML-only) BEGIN; _begin_sqlite_transaction
    # issues ours. This also makes DDL transactional, which migrations rely on.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # Per-connection setting, off by default in SQLite: without it ON DELETE CASCADE and
        # the MFA challenge's user reference are not enforced.
        cursor.execute("PRAGMA foreign_keys = ON")
        # Persistent in the file; readers keep working while a writer commits.
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
        # synchronous stays at its default (FULL): with NORMAL a power cut can lose the last
        # commits, and a lost fencing-token increment could hand out a token twice.
    finally:
        cursor.close()


def _begin_sqlite_transaction(connection: Connection) -> None:
    mode = str(connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")).upper()
    if mode not in _SQLITE_BEGIN_MODES:
        raise ValueError(f"{SQLITE_BEGIN_OPTION} must be one of {sorted(_SQLITE_BEGIN_MODES)}")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _postgres_engine(
    url: str,
    pool_size: int,
    max_overflow: int,
    statement_timeout_ms: int,
    idle_in_transaction_timeout_ms: int,
) -> Engine:
    engine = create_engine(
        url,
        hide_parameters=HIDE_PARAMETERS,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=POSTGRES_POOL_TIMEOUT_SECONDS,
        pool_use_lifo=True,
        pool_recycle=POSTGRES_POOL_RECYCLE_SECONDS,
        connect_args={
            "connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS,
            # Set at connection start-up, so it also covers pool pre-pings and survives
            # rollbacks (a SET inside a transaction would be undone by ROLLBACK). The time
            # zone is UTC whatever the server, the database or the role names: timestamptz
            # values are read back in the session's zone, and near the ends of the year range
            # another zone's reading is outside what psycopg can represent. (libpq sends a
            # PGTZ set in the service's environment as a startup setting of its own, which
            # the server applies after these: `_utc_despite_pgtz` sets it back.)
            "options": (
                f"-c statement_timeout={int(statement_timeout_ms)} "
                "-c idle_in_transaction_session_timeout="
                f"{int(idle_in_transaction_timeout_ms)} -c timezone=UTC"
            ),
            "application_name": "garmin-auth",
        },
    )
    _check_at_checkout(engine, POSTGRES_PING_AFTER_IDLE_SECONDS)
    if os.environ.get("PGTZ"):
        _utc_despite_pgtz(engine)
    return engine


def _utc_despite_pgtz(engine: Engine) -> None:
    """Put each new connection back in UTC: libpq applies `PGTZ` after the start-up options.
    One statement per new connection, and only when `PGTZ` is set."""

    @event.listens_for(engine, "connect")
    def _in_utc(dbapi: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi.cursor()
        try:
            cursor.execute("SET TIME ZONE 'UTC'")
        finally:
            cursor.close()
        dbapi.commit()


_RETURNED_AT = "garmin_auth_returned_at"


def _check_at_checkout(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout only if it sat idle longer than `idle_seconds`;
    a dead one is replaced (the pool retries the checkout with a new connection), and so is
    one left in autocommit, where a transaction would commit statement by statement (a unit
    in autocommit switches it back, or drops the connection: storage.unit_of_work)."""

    @event.listens_for(engine, "connect")
    def _connected(_dbapi: Any, record: ConnectionPoolEntry) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi: Any, record: ConnectionPoolEntry) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if dbapi.autocommit:
            log.error("pooled connection returned in autocommit (a bug); reconnecting")
            raise DisconnectionError()
        returned = record.info.get(_RETURNED_AT)
        if returned is not None and time.monotonic() - returned < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi)
        # Any failure of a ping means the connection is unusable; only the type is logged
        # (driver messages can echo connection parameters).
        except Exception as exc:  # noqa: BLE001
            log.info("pooled connection dead after idling (%s); reconnecting", type(exc).__name__)
            raise DisconnectionError() from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`. Objects stay readable after commit (no lazy reload)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


# PostgreSQL: a node that answers but refuses writes (a hot standby a failover left the pool
# on; default_transaction_read_only set for maintenance) cannot serve a single call that
# writes, which is nearly every one: readiness must take the replica out, not keep it.
_POSTGRES_TAKES_WRITES = text(
    "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'"
)


def database_is_reachable(engine: Engine) -> bool:
    """True if the database answers and takes writes (for the gRPC health service); never
    raises."""
    try:
        with engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}).connect() as connection:
            if engine.dialect.name != "postgresql":
                connection.execute(text("SELECT 1")).scalar_one()
            elif not connection.execute(_POSTGRES_TAKES_WRITES).scalar_one():
                log.warning(
                    "database %s refuses writes (a standby, or read-only); not ready",
                    redacted_database_url(engine.url.render_as_string(hide_password=True)),
                )
                return False
    except (SQLAlchemyError, OSError) as exc:
        # Only the exception type: driver messages can echo connection parameters.
        log.warning(
            "database %s unreachable: %s",
            redacted_database_url(engine.url.render_as_string(hide_password=True)),
            type(exc).__name__,
        )
        return False
    return True


def describe_database_error(exc: BaseException, url: str) -> str:
    """The driver error's type and first line, without the URL's password, for one log or
    check-config line (never a traceback)."""
    original = getattr(exc, "orig", None) or exc
    message = scrubbed((str(original).strip().splitlines() or [""])[0], url)
    return f"{type(original).__name__}: {redact(message)}" if message else type(original).__name__
