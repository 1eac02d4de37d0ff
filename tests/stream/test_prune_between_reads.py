"""A prune-audit that commits while a watch reads a batch never makes the watch skip what it
pruned: the watch answers CURSOR_EXPIRED (README: "while it has not reached them"). Before,
read_after (auth_service/storage/change_log.py) read the oldest kept position before the
entries; on PostgreSQL each statement sees its own snapshot, so a prune committed between the
two reads removed entries the watch had not sent while first_kept still said nothing was
pruned, and read_through moved past them: changes lost without a word."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.pool import NullPool

from auth_service.domain.changes import ChangeFilter, SessionChange
from auth_service.domain.errors import CursorExpired
from auth_service.storage.audit_pruning import prune_audit
from tests.fixtures.servers import ServiceFactory
from tests.stream import connect
from tests.stream.conftest import FAST_STREAM


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_prune_between_the_reads_of_one_batch_is_not_skipped_silently(
    service_factory: ServiceFactory, database_url: str
) -> None:
    replica = service_factory.start(stream=FAST_STREAM)
    for user in ("a", "b", "c"):
        connect(replica.stub, user)
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    time.sleep(0.05)
    for user in ("d", "e"):
        connect(replica.stub, user)

    engine = replica.running.application.engine
    watch_thread: list[int] = []
    pruned = threading.Event()

    def prune_now() -> None:
        other = create_engine(database_url, poolclass=NullPool)
        try:
            prune_audit(other, timedelta(0), now=cutoff)  # changes 1-3 are older
        finally:
            other.dispose()

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # The moment between reading first_kept and reading the entries: an operator's
        # prune-audit commits (one batch).
        if (
            not pruned.is_set()
            and watch_thread
            and threading.get_ident() == watch_thread[0]
            and "FROM garmin_session_change" in statement
            and "ORDER BY garmin_session_change.position" in statement
        ):
            pruned.set()
            runner = threading.Thread(target=prune_now)
            runner.start()
            runner.join(timeout=30)

    event.listen(engine, "before_cursor_execute", before)
    try:
        watch_thread.append(threading.get_ident())
        watching = iter(
            replica.running.application.use_cases.session_events.watch("0", ChangeFilter())
        )
        try:
            first = next(watching)
        except CursorExpired:
            return  # what the README promises for changes pruned before the watch read them
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert pruned.is_set()
    assert isinstance(first, SessionChange)
    assert first.position == 1, (
        f"the watch from cursor 0 started with position {first.position}: changes 1-3 were "
        "pruned between its reads and skipped without CURSOR_EXPIRED"
    )
