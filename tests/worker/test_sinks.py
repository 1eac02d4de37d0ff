"""The sinks on their own: atomic idempotent files, fencing, safe names, the PostgreSQL
upsert; and the parsing of Garmin's activity summaries."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest

from garmin_client.url_secrets import redacted_url
from sync_worker import directory_sink
from sync_worker.activity_list import parse_activity
from sync_worker.directory_sink import DirectorySink
from sync_worker.postgres_sink import PostgresSink
from sync_worker.sinks import (
    Activity,
    FencingRefused,
    SinkError,
    UnsafeUserId,
    check_user_id,
    summary_bytes,
)


def activity(activity_id: int = 42, name: str = "Run 1") -> Activity:
    summary: dict[str, Any] = {
        "activityId": activity_id,
        "activityName": name,
        "startTimeGMT": "2026-03-01 07:30:00",
    }
    return Activity(activity_id, summary, datetime(2026, 3, 1, 7, 30, tzinfo=UTC))


# --- user ids and activity ids ----------------------------------------------------------


@pytest.mark.parametrize("user_id", ["ann", "a.b@c:d+e-f_g", "x" * 128, "..a", "a.."])
def test_safe_user_ids_are_accepted(user_id: str) -> None:
    assert check_user_id(user_id) == user_id


@pytest.mark.parametrize(
    "user_id", ["", ".", "..", "a/b", "../etc", "a\\b", "x" * 129, "ümlaut", "a b", "a\x00"]
)
def test_unsafe_user_ids_are_refused(user_id: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeUserId):
        check_user_id(user_id)
    with pytest.raises(UnsafeUserId):
        DirectorySink(tmp_path).for_user(user_id, 1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "raw",
    [
        {"activityId": "../../etc/passwd"},
        {"activityId": True},
        {"activityId": -3},
        {"activityId": 0},
        {"activityId": 2**64},
        {"activityId": 1.5},
        {"name": "no id"},
        ["not", "a", "dict"],
        # Digits str.isdigit() accepts and int() refuses: before, a ValueError failed the user.
        {"activityId": "²"},
        {"activityId": "①"},
        {"activityId": "9" * 5000},
        # Past the signed 64-bit range of the sink's bigint key.
        {"activityId": str(2**63)},
    ],
)
def test_activities_without_a_usable_id_are_skipped(raw: object) -> None:
    assert parse_activity(raw) is None


def test_the_largest_64_bit_id_is_usable_as_a_number_or_as_text() -> None:
    for raw_id in (2**63 - 1, str(2**63 - 1)):
        parsed = parse_activity({"activityId": raw_id})
        assert parsed is not None
        assert parsed.activity_id == 2**63 - 1


def test_activity_start_times_are_utc() -> None:
    parsed = parse_activity({"activityId": "17", "startTimeGMT": "2026-03-01 07:30:00.0"})
    assert parsed is not None
    assert parsed.activity_id == 17
    assert parsed.start_time == datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
    by_timestamp = parse_activity({"activityId": 18, "beginTimestamp": 1772350200000})
    assert by_timestamp is not None
    assert by_timestamp.start_time == datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
    assert parse_activity({"activityId": 19})
    assert parse_activity({"activityId": 19}).start_time is None  # type: ignore[union-attr]


# --- the directory sink -----------------------------------------------------------------


def test_directory_sink_writes_each_item_once_and_atomically(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "out")
    sink.check()
    user = sink.for_user("ann", 1)
    try:
        assert user.write_summary(activity()) is True
        assert user.write_summary(activity()) is False  # identical: nothing written
        assert user.write_file(42, b"PK zip") is True
        assert user.has_file(42)
        assert user.write_file(42, b"PK zip") is False
        assert user.write_summary(activity(name="Renamed")) is True  # changed at Garmin
        folder = tmp_path / "out" / "ann" / "activities"
        # Nothing in place before the commit.
        assert not (folder / "42.json").exists()
        user.commit()
        assert user.write_summary(activity(name="Renamed")) is False  # in place now
    finally:
        user.close()
    assert sorted(path.name for path in folder.iterdir()) == ["42.json", "42.zip"]
    assert json.loads((folder / "42.json").read_text())["activityName"] == "Renamed"
    assert (folder / "42.json").read_bytes() == summary_bytes(activity(name="Renamed").summary)


def test_directory_sink_refuses_a_stale_fencing_token(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    stale = sink.for_user("ann", 3)
    stale.write_summary(activity(1))
    stale.commit()
    stale.write_summary(activity(5))  # not committed when the newer holder claims
    newer = sink.for_user("ann", 4)
    try:
        newer.write_summary(activity(2))
        with pytest.raises(FencingRefused):
            stale.write_summary(activity(3))
        with pytest.raises(FencingRefused):
            stale.write_file(3, b"zip")
        with pytest.raises(FencingRefused):
            stale.commit()  # its pending item is never put in place
        with pytest.raises(FencingRefused):
            sink.for_user("ann", 2)
        # The newer holder goes on; another user is not affected.
        assert newer.write_summary(activity(4)) is True
        newer.commit()
        other = sink.for_user("bob", 1)
        other.close()
    finally:
        stale.close()
        newer.close()
    assert sorted(p.name for p in (tmp_path / "ann" / "activities").iterdir()) == [
        ".5.json.tmp",  # the stale holder's, left alone: from now on its name is the newer's
        "1.json",
        "2.json",
        "4.json",
    ]


def test_the_fence_is_never_left_empty_and_an_old_fence_still_counts(tmp_path: Path) -> None:
    """The fence was emptied (ftruncate) before the new token was written: a kill between
    the two, or a power cut before the fsync on ext4, left it empty, which read as token 0,
    and a stale holder's write then went through. Now the token is written over the old one
    in one write of a fixed width; a fence of the old format still counts."""
    sink = DirectorySink(tmp_path)
    fence = tmp_path / "ann" / ".fencing-token"
    first = sink.for_user("ann", 6)
    first.write_summary(activity(1, name="new"))
    first.commit()
    first.close()
    # Every write of the fence covers the last one: no shorter content, no empty moment.
    assert fence.read_bytes() == b"0000000000000000006\n"
    # A fence of the old format still holds older holders back; one that is not a token
    # (before: read as 0) lets nobody write.
    fence.write_bytes(b"6\n")
    with pytest.raises(FencingRefused):
        sink.for_user("ann", 5)
    fence.write_bytes(b"garbage")
    with pytest.raises(SinkError, match="unreadable"):
        sink.for_user("ann", 5)
    assert (
        json.loads((tmp_path / "ann" / "activities" / "1.json").read_text())["activityName"]
        == "new"
    )


def test_a_stale_holders_leftover_is_replaced_by_the_newer_holders_item(tmp_path: Path) -> None:
    """Both holders write the same item; only the newer one's content is ever put in place,
    whichever closes last."""
    sink = DirectorySink(tmp_path)
    stale = sink.for_user("ann", 3)
    stale.write_summary(activity(7, name="stale"))
    newer = sink.for_user("ann", 4)
    try:
        newer.write_summary(activity(7, name="newer"))
        stale.close()  # must not remove the newer holder's temporary file
        newer.commit()
    finally:
        newer.close()
    item = tmp_path / "ann" / "activities" / "7.json"
    assert json.loads(item.read_text())["activityName"] == "newer"
    assert [p.name for p in item.parent.iterdir()] == ["7.json"]


def test_items_of_a_sync_that_never_committed_are_removed_on_close(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    failed = sink.for_user("ann", 1)
    failed.write_summary(activity(1))
    failed.write_file(1, b"PK zip")
    assert failed.has_file(1)
    failed.close()
    assert list((tmp_path / "ann" / "activities").iterdir()) == []
    # The next sync writes them again and puts them in place.
    retry = sink.for_user("ann", 2)
    try:
        assert not retry.has_file(1)
        assert retry.write_file(1, b"PK zip") is True
        retry.commit()
    finally:
        retry.close()
    assert [p.name for p in (tmp_path / "ann" / "activities").iterdir()] == ["1.zip"]


def test_directory_sink_reports_an_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SinkError):
        DirectorySink(blocker / "out").check()


# --- the PostgreSQL sink ----------------------------------------------------------------


def rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(
            "SELECT user_id, activity_id, summary->>'activityName', start_time_gmt, fencing_token"
            " FROM garmin_activity ORDER BY user_id, activity_id"
        ).fetchall()


def test_postgres_sink_upserts_idempotently(sink_url: str) -> None:
    sink = PostgresSink(sink_url)
    sink.check()
    sink.init_schema()  # idempotent
    user = sink.for_user("ann", 7)
    try:
        assert user.write_summary(activity()) is True
        assert user.write_summary(activity()) is False
        assert user.write_summary(activity(name="Renamed")) is True
        assert user.has_file(42) is False
    finally:
        user.close()
    assert rows(sink_url) == [
        ("ann", 42, "Renamed", datetime(2026, 3, 1, 7, 30, tzinfo=UTC), 7),
    ]


def test_postgres_sink_refuses_a_lower_fencing_token(sink_url: str) -> None:
    sink = PostgresSink(sink_url)
    stale = sink.for_user("ann", 5)
    stale.write_summary(activity(1, "from five"))
    newer = sink.for_user("ann", 6)
    try:
        newer.write_summary(activity(1, "from six"))
        with pytest.raises(FencingRefused):
            stale.write_summary(activity(1, "stale overwrite"))
        with pytest.raises(FencingRefused):
            stale.write_summary(activity(2, "stale insert"))
        with pytest.raises(FencingRefused):
            sink.for_user("ann", 4)
        # Same token again (a retried write by the current holder) is fine.
        assert newer.write_summary(activity(3, "from six")) is True
    finally:
        stale.close()
        newer.close()
    assert [(row[1], row[2], row[4]) for row in rows(sink_url)] == [
        (1, "from six", 6),
        (3, "from six", 6),
    ]
    with psycopg.connect(sink_url) as connection:
        fence = connection.execute(
            "SELECT fencing_token FROM garmin_sync_fence WHERE user_id = 'ann'"
        ).fetchone()
    assert fence == (6,)


def test_sink_urls_are_shown_without_password() -> None:
    assert (
        redacted_url("postgresql://app:s3cret@db:5432/sync") == "postgresql://app:***@db:5432/sync"
    )
    assert redacted_url("postgresql://db/sync") == "postgresql://db/sync"
    # libpq takes passwords as query parameters too (before: printed as they were).
    assert redacted_url("postgresql://app@db/sync?sslmode=require&password=s3cret") == (
        "postgresql://app@db/sync?sslmode=require&password=***"
    )
    assert redacted_url("postgresql://db/sync?sslpassword=s3cret&Password=x") == (
        "postgresql://db/sync?sslpassword=***&Password=***"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hun%zzter2@127.0.0.1:1/sync",
        "postgresql://app@127.0.0.1:1/sync?password=hun%zzter2",
        "postgresql://app@127.0.0.1:1/sync?password=hunter2secret&sslmode=disable",
    ],
)
def test_a_sink_that_cannot_connect_never_quotes_its_password(url: str) -> None:
    """libpq quotes the piece of a connection string it cannot parse: before, a password
    with a bad %-escape reached the CronJob's log in SinkError's message."""
    with pytest.raises(SinkError) as raised:
        PostgresSink(url, connect_timeout=1).check()
    message = str(raised.value)
    assert "hun" not in message
    assert "zzter" not in message


@pytest.mark.parametrize("method", [PostgresSink.init_schema, PostgresSink.check])
def test_a_statement_the_sink_database_refuses_is_a_sink_error(
    sink_database: str, method: Callable[[PostgresSink], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CREATE privilege on the schema (PostgreSQL 15's default for public), a read-only
    server: before, the psycopg error escaped as a traceback, not the one line and exit 2
    of every other sink problem."""
    refused = psycopg.errors.InsufficientPrivilege("permission denied for schema public")

    def execute(*_args: object, **_kwargs: object) -> NoReturn:
        raise refused

    monkeypatch.setattr(psycopg.Connection, "execute", execute)
    url = sink_database.replace("postgres@", "postgres:hunter2@")
    with pytest.raises(SinkError) as raised:
        method(PostgresSink(url))
    message = str(raised.value)
    assert "InsufficientPrivilege: permission denied for schema public" in message
    assert "hunter2" not in message
    assert "\n" not in message


@pytest.fixture(params=["syncfs", "fsync per item"])
def flush(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways commit() flushes the items' data: syncfs(2) where the kernel reports its
    errors (Linux 5.8+), one fsync per item elsewhere."""
    if request.param == "syncfs":
        if directory_sink._SYNCFS is None:
            pytest.skip("syncfs(2) is not trusted on this kernel")
    else:
        monkeypatch.setattr(directory_sink, "_SYNCFS", None)
    return str(request.param)


def test_directory_sink_flushes_its_items_and_directory_once_per_commit(
    tmp_path: Path, flush: str
) -> None:
    sink = DirectorySink(tmp_path)
    per_item = flush == "fsync per item"
    first = sink.for_user("ann", 1)
    try:
        for activity_id in range(1, 21):
            assert first.write_summary(activity(activity_id)) is True
        assert first.write_summary(activity(1)) is False  # identical: no write, no flush
        # Neither in place nor flushed before the commit.
        assert len(list((tmp_path / "ann" / "activities").glob("*.json"))) == 0
        assert (sink.fsyncs.items, sink.fsyncs.filesystems, sink.fsyncs.directories) == (0, 0, 0)
        first.commit()
        assert len(list((tmp_path / "ann" / "activities").glob("*.json"))) == 20
        # The data once (one syncfs, or 20 fsyncs), then activities/, the user's folder and
        # the root: the user's first commit.
        expected = (20, 0, 3) if per_item else (0, 1, 3)
        assert (sink.fsyncs.items, sink.fsyncs.filesystems, sink.fsyncs.directories) == expected
        first.commit()  # nothing new since: nothing to flush
        assert (sink.fsyncs.items, sink.fsyncs.filesystems, sink.fsyncs.directories) == expected
    finally:
        first.close()
    second = sink.for_user("ann", 2)
    try:
        for activity_id in range(21, 41):
            second.write_summary(activity(activity_id))
        second.commit()
    finally:
        second.close()
    totals = (40, 0, 4, 2) if per_item else (0, 2, 4, 2)
    counts = sink.fsyncs
    assert (counts.items, counts.filesystems, counts.directories, counts.fences) == totals
    assert not list(tmp_path.glob("ann/activities/.*.tmp"))


def test_directory_sink_replaces_what_a_writer_that_died_mid_item_left(tmp_path: Path) -> None:
    """The temporary file's name is fixed (the fence lets one writer in at a time): a torn
    one left by a crash is overwritten, never renamed into place as it was."""
    sink = DirectorySink(tmp_path)
    user_sink = sink.for_user("ann", 1)
    try:
        activities = tmp_path / "ann" / "activities"
        (activities / ".42.json.tmp").write_bytes(b'{"torn": ')
        assert user_sink.write_summary(activity(42)) is True
        user_sink.commit()
    finally:
        user_sink.close()
    assert (activities / "42.json").read_bytes() == summary_bytes(activity(42).summary)
    assert [path.name for path in activities.iterdir()] == ["42.json"]


def test_directory_sink_does_not_follow_a_link_planted_as_its_temporary_file(
    tmp_path: Path,
) -> None:
    sink = DirectorySink(tmp_path / "out")
    user_sink = sink.for_user("ann", 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    try:
        (tmp_path / "out" / "ann" / "activities" / ".42.json.tmp").symlink_to(elsewhere)
        with pytest.raises(SinkError):
            user_sink.write_summary(activity(42))
    finally:
        user_sink.close()
    assert elsewhere.read_bytes() == b"untouched"
    assert not (tmp_path / "out" / "ann" / "activities" / "42.json").exists()


# --- a page at once (both sinks) ----------------------------------------------------------


def _stored_names(kind: str, tmp_path: Path, sink_url: str) -> dict[int, str]:
    if kind == "postgresql":
        return {row[1]: row[2] for row in rows(sink_url)}
    folder = tmp_path / "out" / "ann" / "activities"
    return {
        int(path.stem): json.loads(path.read_text())["activityName"]
        for path in folder.glob("*.json")
    }


@pytest.mark.parametrize("kind", ["directory", "postgresql"])
def test_a_page_of_summaries_is_written_at_once_and_fenced_as_one(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """write_summaries: one result per listing, in order; an id listed twice ends as its last
    listing; an unchanged page writes nothing; a stale holder's page writes none of its items."""
    sink_url = str(request.getfixturevalue("sink_url")) if kind == "postgresql" else ""
    sink = PostgresSink(sink_url) if kind == "postgresql" else DirectorySink(tmp_path / "out")
    sink.check()
    no_start = Activity(3, {"activityId": 3, "activityName": "No start"}, None)
    page = [activity(1, "One"), activity(2, "Two, first"), no_start, activity(2, "Two")]
    stale = sink.for_user("ann", 5)
    try:
        written = stale.write_summaries(page)
        assert len(written) == len(page)
        assert (written[0], written[2], written[3]) == (True, True, True)
        assert stale.write_summaries([]) == []
        stale.commit()
        assert stale.write_summaries(page[:1] + page[2:]) == [False, False, False]
        newer = sink.for_user("ann", 6)
        newer.close()
        with pytest.raises(FencingRefused):
            stale.write_summaries([activity(1, "stale"), activity(4, "stale")])
        stale.commit()
    finally:
        stale.close()
    assert _stored_names(kind, tmp_path, sink_url) == {1: "One", 2: "Two", 3: "No start"}


def test_postgres_sink_reuses_a_users_connection_unless_it_failed(sink_url: str) -> None:
    """A connection goes back to the sink when its user is done (once, however often the
    user's sink is closed) and serves the next user; a broken one is dropped."""
    sink = PostgresSink(sink_url)
    first = sink.for_user("ann", 1)
    pid = first._connection.info.backend_pid
    first.close()
    first.close()
    second = sink.for_user("bob", 1)
    third = sink.for_user("cid", 1)
    try:
        assert second._connection.info.backend_pid == pid
        assert third._connection.info.backend_pid != pid
        with psycopg.connect(sink_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(SinkError):
            second.write_summary(activity(1))
    finally:
        second.close()
        third.close()
    fourth = sink.for_user("dan", 1)
    try:
        kept = fourth._connection.info.backend_pid
        assert kept not in (pid, 0)
        assert fourth.write_summary(activity(2)) is True
    finally:
        fourth.close()
    # The server ends a kept connection while it is idle: the next user gets a new one.
    with psycopg.connect(sink_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (kept,))
    fifth = sink.for_user("eve", 1)
    try:
        assert fifth._connection.info.backend_pid not in (kept, 0)
        assert fifth.write_summary(activity(3)) is True
    finally:
        fifth.close()
        sink.close()
    assert [row[:2] for row in rows(sink_url)] == [("dan", 2), ("eve", 3)]


def test_a_fence_that_cannot_be_opened_is_a_sink_error(tmp_path: Path) -> None:
    """Before: the OSError escaped for_user, and the sync reported an internal error with a
    traceback instead of the sink's problem."""
    sink = DirectorySink(tmp_path)
    sink.for_user("ann", 1).close()
    fence = tmp_path / "ann" / ".fencing-token"
    fence.unlink()
    fence.mkdir()  # opening it for writing fails: EISDIR
    with pytest.raises(SinkError, match="cannot claim the user's directory"):
        sink.for_user("ann", 2)


def test_after_a_failed_flush_nothing_of_the_sync_is_put_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel reports a writeback error once: a second syncfs or fsync of the same data
    answers 0 though the data never reached the disk. Before, a sync whose commit failed
    committed again to keep what it stored (UserSync._keep_stored), and that second commit
    renamed items into place whose data was lost. The flush here fails for a reason that
    lasts only as long (a temporary file gone, on the per-file fsync path) and is then made
    to go away: the second commit must still refuse."""
    monkeypatch.setattr(directory_sink, "_SYNCFS", None)
    user_sink = DirectorySink(tmp_path).for_user("amy", 1)
    try:
        user_sink.claim()
        assert user_sink.write_summary(activity(1))
        activities = tmp_path / "amy" / "activities"
        (temporary,) = [p for p in activities.iterdir() if p.name.startswith(".")]
        content = temporary.read_bytes()
        temporary.unlink()
        with pytest.raises(SinkError):
            user_sink.commit()
        temporary.write_bytes(content)  # the error gone, as a writeback error is once read
        with pytest.raises(SinkError, match="earlier flush"):
            user_sink.commit()
        assert not (activities / "1.json").exists()
    finally:
        user_sink.close()
