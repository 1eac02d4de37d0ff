"""The PostgreSQL sink: the worker's own database (never the auth service's), one
transaction per page of summaries, fenced by the lease's token in the same statement."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any, Final, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from garmin_client.url_secrets import scrubbed
from sync_worker.sinks import (
    Activity,
    FencingRefused,
    SinkError,
    check_user_id,
    claimed,
    json_leaf,
    mapped_leaves,
)

SCHEMA_SQL: Final = """
CREATE TABLE IF NOT EXISTS garmin_sync_fence (
    user_id text PRIMARY KEY,
    fencing_token bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS garmin_activity (
    user_id text NOT NULL,
    activity_id bigint NOT NULL,
    summary jsonb NOT NULL,
    start_time_gmt timestamptz,
    fencing_token bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, activity_id)
);
"""
# A statement that cannot go on (a lock held by an ALTER or a VACUUM FULL, a server or network
# that stopped answering) fails the user (FAILED, released) instead of holding its sync thread,
# its renewed lease and a SIGTERM'd run for ever: server-side limits for a server that
# answers, TCP's for one that does not. A page's upsert takes milliseconds.
STATEMENT_TIMEOUT_MS: Final = 30_000
LOCK_TIMEOUT_MS: Final = 10_000
# Set once a connection is up, and only where nothing else set them (the server's
# configuration, the database, the role, the URL's options, PGOPTIONS; 0 set there, "no
# limit", included): an operator's own limits win. Set as startup options
# instead, they would replace PGOPTIONS and a service file's options, and some poolers refuse
# startup options at all.
_LIMITS_SQL: Final = """
SELECT set_config(
    name, CASE name WHEN 'statement_timeout' THEN %(statement)s ELSE %(lock)s END, false
)
FROM pg_settings
WHERE name IN ('statement_timeout', 'lock_timeout') AND source = 'default'
"""
_LIMITS: Final = {"statement": str(STATEMENT_TIMEOUT_MS), "lock": str(LOCK_TIMEOUT_MS)}
# libpq's keepalives (a peer silent this long while we wait is dead) and tcp_user_timeout
# (data unacknowledged this long): both about 30 s. Not where the URL gives its own, nor with
# a pg_service.conf service (which may).
_TCP_SETTINGS: Final = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "4",
    "tcp_user_timeout": "30000",
}

# Serializes concurrent init-sink runs (CREATE TABLE IF NOT EXISTS races on the catalog).
_SCHEMA_LOCK_KEY: Final = 0x6761726D696E  # "garmin"

# Raise the user's fence to our token (refused when a higher one is recorded) ...
_CLAIM_SQL: Final = """
INSERT INTO garmin_sync_fence AS f (user_id, fencing_token, updated_at)
VALUES (%(user_id)s, %(token)s, now())
ON CONFLICT (user_id) DO UPDATE
    SET fencing_token = EXCLUDED.fencing_token, updated_at = EXCLUDED.updated_at
    WHERE f.fencing_token <= EXCLUDED.fencing_token
RETURNING f.fencing_token
"""
# ... then upsert a page of activities, each unless identical: one statement, so the check
# and the writes are atomic, and the fence row's lock serializes every writer of the user
# until commit.
_UPSERT_SQL: Final = """
WITH fence AS (
    INSERT INTO garmin_sync_fence AS f (user_id, fencing_token, updated_at)
    VALUES (%(user_id)s, %(token)s, now())
    ON CONFLICT (user_id) DO UPDATE
        SET fencing_token = EXCLUDED.fencing_token, updated_at = EXCLUDED.updated_at
        WHERE f.fencing_token <= EXCLUDED.fencing_token
    RETURNING f.fencing_token
), page AS (
    SELECT * FROM unnest(%(activity_ids)s::bigint[], %(summaries)s::jsonb[],
                         %(starts)s::timestamptz[]) AS p(activity_id, summary, start_time_gmt)
), written AS (
    INSERT INTO garmin_activity AS a
        (user_id, activity_id, summary, start_time_gmt, fencing_token, updated_at)
    SELECT %(user_id)s::text, page.activity_id, page.summary, page.start_time_gmt,
           fence.fencing_token, now()
    FROM fence, page
    ON CONFLICT (user_id, activity_id) DO UPDATE
        SET summary = EXCLUDED.summary,
            start_time_gmt = EXCLUDED.start_time_gmt,
            fencing_token = EXCLUDED.fencing_token,
            updated_at = EXCLUDED.updated_at
        WHERE a.fencing_token <= EXCLUDED.fencing_token
          AND (a.summary IS DISTINCT FROM EXCLUDED.summary
               OR a.start_time_gmt IS DISTINCT FROM EXCLUDED.start_time_gmt)
    RETURNING a.activity_id
)
SELECT (SELECT count(*) FROM fence), ARRAY(SELECT activity_id FROM written)
"""


def libpq_url(url: str) -> str:
    """Accept the SQLAlchemy spelling too (postgresql+psycopg://) and hand libpq its own."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in {"postgresql", "postgres"}:
        raise ValueError("the sink URL must start with postgresql://")
    return "postgresql://" + rest


def _jsonb_text(summary: Any) -> bytes:
    """The summary as jsonb takes it. PostgreSQL refuses NUL, lone surrogates, NaN and
    infinities, which Garmin's JSON may carry: only then is the summary cleaned (NaN and
    infinities become null), so one odd value does not fail its page on every run."""
    try:
        text = _dumps(summary, allow_nan=False)
    except ValueError:  # a NaN or an infinity, or a lone surrogate (UnicodeEncodeError)
        text = None
    if text is None or b"\\u0000" in text:
        # One copy, cleaned as storable() cleans and with NaN and infinities as null.
        text = _dumps(mapped_leaves(summary, json_leaf), allow_nan=True)
    return text


def _dumps(value: Any, *, allow_nan: bool) -> bytes:
    """json.dumps of a summary, however deep: the C encoder runs deeper in the stack than
    json.loads did (psycopg adapts the value further down), so a summary nested almost as
    deep as the parser allows raised RecursionError here, and the user failed on every run.
    Such a summary is written without recursion instead."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=allow_nan).encode()
    except RecursionError:
        return _dumps_without_recursion(value, allow_nan=allow_nan).encode()


def _dumps_without_recursion(value: Any, *, allow_nan: bool) -> str:
    """The JSON text of parsed JSON (dicts, lists, leaves) as json.dumps writes it, with a
    stack of its own instead of Python's (as sinks.mapped_leaves copies)."""
    leaf = json.JSONEncoder(ensure_ascii=False, allow_nan=allow_nan).encode
    out: list[str] = []
    # (True, text): text to write as it is; (False, value): a value to encode.
    pending: list[tuple[bool, Any]] = [(False, value)]
    while pending:
        literal, item = pending.pop()
        if literal:
            out.append(item)
        elif isinstance(item, dict):
            parts: list[tuple[bool, Any]] = [(True, "{")]
            for index, (key, child) in enumerate(item.items()):
                separator = ", " if index else ""
                name = key if isinstance(key, str) else str(key)
                parts += [(True, f"{separator}{leaf(name)}: "), (False, child)]
            parts.append((True, "}"))
            pending.extend(reversed(parts))
        elif isinstance(item, list):
            parts = [(True, "[")]
            for index, child in enumerate(item):
                parts += [(True, ", ")] if index else []
                parts.append((False, child))
            parts.append((True, "]"))
            pending.extend(reversed(parts))
        else:
            out.append(leaf(item))
    return "".join(out)


def _problem(exc: psycopg.Error, url: str = "") -> str:
    # libpq's first line names the failure (host, database, user); scrubbed of the URL's
    # secrets all the same, since a connection string it cannot parse is quoted in it.
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else "no detail"
    return f"{type(exc).__name__}: {scrubbed(first, url)}"


def _connection_settings(url: str) -> dict[str, str]:
    """libpq parameters added to the URL's: the TCP settings above that it leaves unset."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return {}  # the connection itself says what is wrong with the URL
    if "service" in given or os.environ.get("PGSERVICE"):
        return {}
    return {name: value for name, value in _TCP_SETTINGS.items() if name not in given}


class PostgresSink:
    """Table ``garmin_activity`` keyed by (user_id, activity_id), fenced per user by
    ``garmin_sync_fence``. One connection per user being synced (autocommit), taken from
    the connections earlier users gave back: a new connection costs the sink database a
    backend's start and the worker a TCP and authentication handshake, per user."""

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        self._url = libpq_url(url)
        self._connect_timeout = connect_timeout
        self._settings = _connection_settings(self._url)
        # Idle connections, at most one per thread that synced at once (thread-safe).
        self._idle: list[psycopg.Connection[Any]] = []
        self._idle_lock = threading.Lock()
        self._closed = False

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            connection = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                **cast("dict[str, Any]", self._settings),
            )
        except psycopg.Error as exc:
            raise SinkError(
                f"cannot connect to the sink database ({_problem(exc, self._url)})"
            ) from None
        try:
            connection.execute(_LIMITS_SQL, _LIMITS)
        except psycopg.Error as exc:
            connection.close()
            raise SinkError(
                f"cannot connect to the sink database ({_problem(exc, self._url)})"
            ) from None
        return connection

    def init_schema(self) -> None:
        """Create the tables (idempotent). SinkError when the database refuses them (a role
        without CREATE on the schema, a read-only server)."""
        try:
            with self._connect() as connection, connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                connection.execute(SCHEMA_SQL)
        except psycopg.Error as exc:
            raise SinkError(
                f"cannot create the sink's tables ({_problem(exc, self._url)})"
            ) from None

    def check(self) -> None:
        try:
            with self._connect() as connection:
                row = connection.execute(
                    "SELECT to_regclass('garmin_activity') IS NOT NULL"
                    " AND to_regclass('garmin_sync_fence') IS NOT NULL"
                ).fetchone()
        except psycopg.Error as exc:
            raise SinkError(f"cannot read the sink database ({_problem(exc, self._url)})") from None
        if not row or not row[0]:
            raise SinkError(
                "the sink database has no garmin_activity table: "
                "run `garmin-sync-worker init-sink --sink URL` first"
            )

    def for_user(self, user_id: str, fencing_token: int) -> _PostgresUserSink:
        user_id = check_user_id(user_id)
        connection, kept = self._take()
        try:
            return claimed(_PostgresUserSink(self, connection, user_id, fencing_token))
        except SinkError:
            if not kept:
                raise
        # A kept connection that the server closed while it was idle (a restart, an idle
        # timeout) fails its first statement: once more, on a new connection.
        return claimed(_PostgresUserSink(self, self._connect(), user_id, fencing_token))

    def close(self) -> None:
        with self._idle_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _take(self) -> tuple[psycopg.Connection[Any], bool]:
        """A connection, and whether it was kept from an earlier user."""
        with self._idle_lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def give_back(self, connection: psycopg.Connection[Any]) -> None:
        """Keep a user's connection for the next user, unless it failed (broken, or left in
        a transaction) or the sink is closed."""
        healthy = (
            not connection.closed
            and not connection.broken
            and connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        )
        with self._idle_lock:
            if healthy and not self._closed:
                self._idle.append(connection)
                return
        connection.close()


class _PostgresUserSink:
    def __init__(
        self, sink: PostgresSink, connection: psycopg.Connection[Any], user_id: str, token: int
    ) -> None:
        self._sink = sink
        self._connection = connection
        self._user_id = user_id
        self._token = token
        self._given_back = False

    def close(self) -> None:
        # Once: a connection given back twice would serve two users at once.
        if not self._given_back:
            self._given_back = True
            self._sink.give_back(self._connection)

    def _refused(self) -> FencingRefused:
        return FencingRefused("a newer lease holder has written for this user")

    def claim(self) -> None:
        try:
            row = self._connection.execute(
                _CLAIM_SQL, {"user_id": self._user_id, "token": self._token}
            ).fetchone()
        except psycopg.Error as exc:
            raise SinkError(f"cannot write to the sink database ({_problem(exc)})") from None
        if row is None:
            raise self._refused()

    # The UserSink protocol's signatures; this sink keeps no files (--with-files needs --out).
    def has_file(self, activity_id: int) -> bool:  # noqa: ARG002
        return False

    def write_file(self, activity_id: int, content: bytes) -> bool:  # noqa: ARG002
        raise SinkError("the PostgreSQL sink stores summaries only")

    def commit(self) -> None:
        """Nothing to do: each write is its own committed transaction."""

    def write_summary(self, activity: Activity) -> bool:
        return self.write_summaries([activity])[0]

    def write_summaries(self, activities: Sequence[Activity]) -> list[bool]:
        """One statement and round trip per page, not per summary. An id listed twice in
        the page is written once, as its last listing (one INSERT cannot upsert a row twice);
        the earlier listing reports False."""
        last = {activity.activity_id: index for index, activity in enumerate(activities)}
        page = [activities[index] for index in sorted(last.values())]
        if not page:
            return []
        parameters = {
            "user_id": self._user_id,
            "token": self._token,
            "activity_ids": [activity.activity_id for activity in page],
            "summaries": [Jsonb(activity.summary, dumps=_jsonb_text) for activity in page],
            "starts": [activity.start_time for activity in page],
        }
        try:
            row = self._connection.execute(_UPSERT_SQL, parameters).fetchone()
        except psycopg.Error as exc:
            raise SinkError(f"cannot write to the sink database ({_problem(exc)})") from None
        fenced, written_ids = row if row is not None else (0, [])
        if not fenced:
            raise self._refused()
        written = set(written_ids)
        return [
            last[activity.activity_id] == index and activity.activity_id in written
            for index, activity in enumerate(activities)
        ]
