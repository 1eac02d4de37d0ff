"""prune_boundary reads "no young entry" and the head in two statements: the head first.

On PostgreSQL (READ COMMITTED) each statement has its own snapshot: when every numbered
entry is old, an entry numbered between the two (a replica's sequencer committing a fresh
change) is below head() + 1 and is deleted by the run, though it is not old. The old code
read both in the DELETE's single statement.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from auth_service.storage import change_log
from auth_service.storage.audit_pruning import prune_audit

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RETENTION = timedelta(days=90)
_INSERT = text(
    "INSERT INTO garmin_session_change (position, occurred_at, user_id, rpc, state, status)"
    " VALUES (:p, :at, 'u', 'ReleaseLease', 'ACTIVE', '{}')"
)


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_an_entry_numbered_while_the_boundary_is_read_is_kept(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.begin() as connection:
        for position in range(1, 6):
            connection.execute(_INSERT, {"p": position, "at": NOW - RETENTION - timedelta(days=1)})
        connection.execute(text("UPDATE garmin_change_counter SET last_position = 5"))

    original_head = change_log.SqlChangeLog.head
    numbered: list[int] = []

    def head_after_a_sequencer_commits(self: change_log.SqlChangeLog) -> int:
        if not numbered:
            # Another replica's sequencer numbers a change made a moment ago, and commits.
            with engine.begin() as other:
                other.execute(_INSERT, {"p": None, "at": NOW - timedelta(seconds=1)})
            with engine.begin() as sequencer:
                assert change_log.SqlChangeLog(sequencer).sequence_pending() == 1
            numbered.append(6)
        return original_head(self)

    monkeypatch.setattr(change_log.SqlChangeLog, "head", head_after_a_sequencer_commits)
    prune_audit(engine, RETENTION, now=NOW)

    assert numbered, "the boundary was read without head(): the interleaving did not happen"
    with engine.connect() as connection:
        kept = (
            connection.execute(text("SELECT position FROM garmin_session_change ORDER BY position"))
            .scalars()
            .all()
        )
    assert kept == [6], f"prune-audit kept {kept}: a change a second old was deleted"
