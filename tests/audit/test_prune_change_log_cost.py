"""prune-audit's change-log batches read their own entries, not the whole old part of the log.

SqlChangeLog.delete_older_than computed "the first young position" (min(position) where
occurred_at >= cutoff) inside every batch's DELETE. garmin_session_change has no index on
occurred_at, so PostgreSQL walked the position index from the start and filtered every old
entry to find it, and the batch's own walk filtered `position < first_young` the same way: a
run over N old entries in batches of B read about N^2/B entries (one batch of 100 read 40,204
of 60,000 here), each batch holding its row locks meanwhile. The boundary is now read once
per run (prune_boundary), and each batch starts where the last one ended (delete_before).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from auth_service.storage.change_log import SqlChangeLog

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=90)
OLD = 20_000
YOUNG = 40_000
BATCH = 100

_FETCHED = text(
    "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
    "FROM pg_stat_xact_user_tables WHERE relname = :table"
)


def _seed(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO garmin_session_change (position, occurred_at, user_id, rpc, state,"
                " status) SELECT g, :start + g * interval '1 second', 'u', 'ReleaseLease',"
                " 'ACTIVE', '{}' FROM generate_series(1, :n) g"
            ),
            {"start": CUTOFF - timedelta(days=2), "n": OLD},
        )
        connection.execute(
            text(
                "INSERT INTO garmin_session_change (position, occurred_at, user_id, rpc, state,"
                " status) SELECT :old + g, :start + g * interval '1 second', 'u',"
                " 'ReleaseLease', 'ACTIVE', '{}' FROM generate_series(1, :n) g"
            ),
            {"old": OLD, "start": CUTOFF + timedelta(hours=1), "n": YOUNG},
        )
        connection.execute(
            text("UPDATE garmin_change_counter SET last_position = :n"), {"n": OLD + YOUNG}
        )
        connection.execute(text("ANALYZE garmin_session_change"))


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_change_log_prune_batch_reads_its_batch_not_the_whole_log(
    engine: Engine,
) -> None:
    _seed(engine)
    with engine.begin() as connection:
        boundary = SqlChangeLog(connection).prune_boundary(CUTOFF)
    assert boundary == OLD + 1
    after = 0
    for _ in range(3):  # the first batches and later ones alike
        with engine.begin() as connection:
            # Counted from here: PostgreSQL 15 flushes a backend's counts at most once a
            # second, so the view still holds an earlier transaction's (the boundary's scan).
            before = connection.execute(_FETCHED, {"table": "garmin_session_change"}).scalar_one()
            deleted, after = SqlChangeLog(connection).delete_before(
                boundary, after=after, limit=BATCH
            )
            read = (
                connection.execute(_FETCHED, {"table": "garmin_session_change"}).scalar_one()
                - before
            )
        assert deleted == BATCH
        assert read <= 3 * BATCH, f"one batch of {BATCH} read {read} entries of {OLD + YOUNG}"
    assert after == 3 * BATCH
