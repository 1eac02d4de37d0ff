"""Where synced activities go: a directory (the default, for a volume) or the worker's own
PostgreSQL database (never the auth service's).

Both sinks are idempotent (a re-run writes nothing twice: identical content is skipped), write
each item atomically (a crash leaves no half-written item), and fence writes by the lease's
fencing token: once a holder with a higher token has written for a user, a stale holder's
writes are refused with ``FencingRefused``, so a worker whose lease was taken over can never
overwrite the newer holder's data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.types.json import Jsonb

from garmin_client.user_ids import USER_ID_RULE, is_user_id

_FENCE_FILE: Final = ".fencing-token"


class SinkError(Exception):
    """The sink cannot take writes (unreachable, schema missing, disk full...)."""


class FencingRefused(Exception):
    """A lease holder with a higher fencing token has written for this user: we are stale."""


class UnsafeUserId(ValueError):
    """A user id that cannot safely name a directory."""


def check_user_id(user_id: str) -> str:
    """The auth service's rule, checked again here because the id becomes a path."""
    if not is_user_id(user_id) or user_id in {".", ".."}:
        raise UnsafeUserId(f"a user id {USER_ID_RULE}")
    return user_id


@dataclass(frozen=True)
class Activity:
    """One activity summary as Garmin listed it."""

    activity_id: int
    summary: dict[str, Any]
    start_time: datetime | None


class UserSink(Protocol):
    """Writes for one user under one lease (one fencing token). Not shared across threads."""

    def has_file(self, activity_id: int) -> bool:
        """Whether the activity's original file is already stored."""
        ...

    def write_file(self, activity_id: int, content: bytes) -> bool:
        """Store the original file; False when identical content was already there."""
        ...

    def write_summary(self, activity: Activity) -> bool:
        """Store the summary; False when identical content was already there."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """A destination for every user's activities. Thread-safe."""

    def check(self) -> None:
        """Raise SinkError unless the sink can take writes (run before leasing anyone)."""
        ...

    def for_user(self, user_id: str, fencing_token: int) -> UserSink:
        """Claim the user's fence with this token (FencingRefused when a newer holder has)."""
        ...

    def close(self) -> None: ...


def summary_bytes(summary: dict[str, Any]) -> bytes:
    """Canonical JSON, so an unchanged summary is byte-identical on every run."""
    return (json.dumps(summary, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


# --- The directory sink ---------------------------------------------------------------------


class DirectorySink:
    """``DIR/<user_id>/activities/<activityId>.json`` (+ ``.zip`` with the original file).

    Writes go to a temporary file in the same directory, are fsynced, then renamed over the
    target, so a reader (or a crash) never sees half an item. The user's fencing token is kept
    in ``DIR/<user_id>/.fencing-token`` and checked under flock(2) around every write.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the output directory: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise SinkError("the output directory is not writable")

    def for_user(self, user_id: str, fencing_token: int) -> _DirectoryUserSink:
        folder = self.root / check_user_id(user_id)
        try:
            (folder / "activities").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the user's directory: {exc.strerror}") from None
        user_sink = _DirectoryUserSink(folder, fencing_token)
        try:
            user_sink.claim()
        except BaseException:
            user_sink.close()
            raise
        return user_sink

    def close(self) -> None:
        return None


class _DirectoryUserSink:
    def __init__(self, folder: Path, fencing_token: int) -> None:
        self._activities = folder / "activities"
        self._token = fencing_token
        self._fence = os.open(folder / _FENCE_FILE, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fence)

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[None]:
        """Hold the user's fence while checking our token and writing."""
        fcntl.flock(self._fence, fcntl.LOCK_EX)
        try:
            os.lseek(self._fence, 0, os.SEEK_SET)
            raw = os.read(self._fence, 64).strip()
            recorded = int(raw) if raw.isdigit() else 0
            if recorded > self._token:
                raise FencingRefused(
                    f"a newer lease holder (fencing token {recorded}) has written for this user"
                )
            if recorded < self._token:
                os.ftruncate(self._fence, 0)
                os.pwrite(self._fence, f"{self._token}\n".encode(), 0)
                os.fsync(self._fence)
            yield
        finally:
            fcntl.flock(self._fence, fcntl.LOCK_UN)

    def claim(self) -> None:
        with self._fenced():
            pass

    def has_file(self, activity_id: int) -> bool:
        return (self._activities / f"{activity_id}.zip").is_file()

    def write_file(self, activity_id: int, content: bytes) -> bool:
        return self._write(self._activities / f"{activity_id}.zip", content)

    def write_summary(self, activity: Activity) -> bool:
        path = self._activities / f"{activity.activity_id}.json"
        return self._write(path, summary_bytes(activity.summary))

    def _write(self, path: Path, content: bytes) -> bool:
        try:
            with self._fenced():
                return _atomic_write(path, content)
        except OSError as exc:
            raise SinkError(f"cannot write {path.name}: {exc.strerror}") from None


def _atomic_write(path: Path, content: bytes) -> bool:
    """Temp file in the same directory, fsync, rename, fsync the directory. False when the
    file already holds exactly this content (nothing is written twice)."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size == len(content) and path.read_bytes() == content:
            return False
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temporary).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temporary).unlink()
        raise
    # The rename itself must survive a power cut too.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


# --- The PostgreSQL sink --------------------------------------------------------------------

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
# Serializes concurrent init-sink runs (CREATE TABLE IF NOT EXISTS races on the catalog).
_SCHEMA_LOCK_KEY: Final = 0x6761726D696E  # "garmin"

# Raise the user's fence to our token (refused when a higher one is recorded), then upsert
# the activity unless identical: one statement, so the check and the write are atomic, and
# the fence row's lock serializes every writer of the user until commit.
_CLAIM_SQL: Final = """
INSERT INTO garmin_sync_fence AS f (user_id, fencing_token, updated_at)
VALUES (%(user_id)s, %(token)s, now())
ON CONFLICT (user_id) DO UPDATE
    SET fencing_token = EXCLUDED.fencing_token, updated_at = EXCLUDED.updated_at
    WHERE f.fencing_token <= EXCLUDED.fencing_token
RETURNING f.fencing_token
"""
_UPSERT_SQL: Final = """
WITH fence AS (
    INSERT INTO garmin_sync_fence AS f (user_id, fencing_token, updated_at)
    VALUES (%(user_id)s, %(token)s, now())
    ON CONFLICT (user_id) DO UPDATE
        SET fencing_token = EXCLUDED.fencing_token, updated_at = EXCLUDED.updated_at
        WHERE f.fencing_token <= EXCLUDED.fencing_token
    RETURNING f.fencing_token
), written AS (
    INSERT INTO garmin_activity AS a
        (user_id, activity_id, summary, start_time_gmt, fencing_token, updated_at)
    SELECT %(user_id)s::text, %(activity_id)s::bigint, %(summary)s::jsonb, %(start)s::timestamptz,
           fence.fencing_token, now()
    FROM fence
    ON CONFLICT (user_id, activity_id) DO UPDATE
        SET summary = EXCLUDED.summary,
            start_time_gmt = EXCLUDED.start_time_gmt,
            fencing_token = EXCLUDED.fencing_token,
            updated_at = EXCLUDED.updated_at
        WHERE a.fencing_token <= EXCLUDED.fencing_token
          AND (a.summary IS DISTINCT FROM EXCLUDED.summary
               OR a.start_time_gmt IS DISTINCT FROM EXCLUDED.start_time_gmt)
    RETURNING 1
)
SELECT (SELECT count(*) FROM fence), (SELECT count(*) FROM written)
"""


def libpq_url(url: str) -> str:
    """Accept the SQLAlchemy spelling too (postgresql+psycopg://) and hand libpq its own."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in {"postgresql", "postgres"}:
        raise ValueError("the sink URL must start with postgresql://")
    return "postgresql://" + rest


def redacted_url(url: str) -> str:
    """The URL without its password, fit for a message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))


def _problem(exc: psycopg.Error) -> str:
    # libpq's first line names the failure (host, database, user) without the password.
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else 'no detail'}"


class PostgresSink:
    """Table ``garmin_activity`` keyed by (user_id, activity_id), fenced per user by
    ``garmin_sync_fence``. One connection per user being synced (autocommit)."""

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        self._url = libpq_url(url)
        self._connect_timeout = connect_timeout

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._url, autocommit=True, connect_timeout=self._connect_timeout
            )
        except psycopg.Error as exc:
            raise SinkError(f"cannot connect to the sink database ({_problem(exc)})") from None

    def init_schema(self) -> None:
        """Create the tables (idempotent)."""
        with self._connect() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            connection.execute(SCHEMA_SQL)

    def check(self) -> None:
        with self._connect() as connection:
            row = connection.execute(
                "SELECT to_regclass('garmin_activity') IS NOT NULL"
                " AND to_regclass('garmin_sync_fence') IS NOT NULL"
            ).fetchone()
        if not row or not row[0]:
            raise SinkError(
                "the sink database has no garmin_activity table: "
                "run `garmin-sync-worker init-sink --sink URL` first"
            )

    def for_user(self, user_id: str, fencing_token: int) -> _PostgresUserSink:
        user_sink = _PostgresUserSink(self._connect(), check_user_id(user_id), fencing_token)
        try:
            user_sink.claim()
        except BaseException:
            user_sink.close()
            raise
        return user_sink

    def close(self) -> None:
        return None


class _PostgresUserSink:
    def __init__(self, connection: psycopg.Connection[Any], user_id: str, token: int) -> None:
        self._connection = connection
        self._user_id = user_id
        self._token = token

    def close(self) -> None:
        self._connection.close()

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

    def write_summary(self, activity: Activity) -> bool:
        parameters = {
            "user_id": self._user_id,
            "token": self._token,
            "activity_id": activity.activity_id,
            "summary": Jsonb(activity.summary),
            "start": activity.start_time,
        }
        try:
            row = self._connection.execute(_UPSERT_SQL, parameters).fetchone()
        except psycopg.Error as exc:
            raise SinkError(f"cannot write to the sink database ({_problem(exc)})") from None
        fenced, written = row if row is not None else (0, 0)
        if not fenced:
            raise self._refused()
        return bool(written)


def open_sink(out_dir: Path | None, sink_url: str | None) -> Sink:
    """The sink the command line chose (exactly one of the two is set)."""
    if sink_url is not None:
        return PostgresSink(sink_url)
    assert out_dir is not None
    return DirectorySink(out_dir)
