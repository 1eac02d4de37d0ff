"""The change log (garmin_session_change): numbered in commit order, without gaps.

Why not the entry's own id: a BIGSERIAL is handed out when a row is inserted, not when its
transaction commits. A transaction that took id 10 can commit after one that took id 11, so a
follower that read up to 11 would have moved past 10 for ever. Nor PostgreSQL's transaction
ids with a pg_snapshot_xmin watermark: any long transaction in the cluster, even of another
database, would hold every stream back.

So an entry is written without a position, in the transaction of its change, and numbered
after it committed by a sequencing pass (the outbox pattern, with one writer of positions at a
time). A pass takes an advisory lock (PostgreSQL; a replica that finds it taken leaves the
work to the pass under way or the next one) and the one-row counter's lock, reads the entries
still without a position (only committed ones are visible, and the statement starts after the
locks are held, so it sees everything committed before), numbers them from the counter on and
moves the counter, in one transaction. Passes are therefore one sequence across replicas:
positions only grow and are never reused, and since a pass commits its positions and the
counter together, a reader that sees the counter at N sees every position up to N: no gap, no
duplicate. Entries of one pass are numbered in the order they were written; one user's changes
are written in commit order (the user's row lock orders them), so their positions follow their
commits.

Writers never wait for one another or for a pass: every replica's sequencer thread
(auth_service.storage.change_sequencer) runs the passes, woken by this replica's commits and
by the NOTIFY a pass sends on PostgreSQL, and at least every poll interval, so the entries of
a replica that died right after its commit get their numbers from another one.

Entries keep the session's status as the transaction left it (read back in the transaction,
after its changes), as JSON: the status view's fields, and the lease without its id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.engine import Row

from auth_service.domain.changes import ChangeBatch, ChangeFilter, PendingChange, SessionChange
from auth_service.domain.models import LeaseView, SessionKind, SessionState, SessionStatusView
from auth_service.domain.views import status_view
from auth_service.storage.executor import Executor, dialect_name
from auth_service.storage.models import GarminChangeCounter, GarminSessionChange
from auth_service.storage.session_repository import SqlSessionRepository
from auth_service.storage.upsert import insert_ignoring_conflict
from auth_service.storage.user_scope import starts_with

Change = GarminSessionChange
Counter = GarminChangeCounter
# The channel PostgreSQL followers LISTEN on (auth_service.storage.change_signal).
NOTIFY_CHANNEL = "garmin_auth_session_changes"
_NOTIFY = text(f"NOTIFY {NOTIFY_CHANNEL}")
# The advisory lock of a sequencing pass (a stable 64-bit key for its name).
_SEQUENCER_KEY = int.from_bytes(
    hashlib.sha256(b"garmin-auth.change-log-sequencer").digest()[:8], "big", signed=True
)
_TRY_LOCK = text(f"SELECT pg_try_advisory_xact_lock({_SEQUENCER_KEY})")
_LOCK = text(f"SELECT pg_advisory_xact_lock({_SEQUENCER_KEY})")
_COUNTER_ID = 1
CHANGES = cast(Table, Change.__table__)
# Entries are inserted by auth_service.storage.trail_writer (with their audit events).
INSERT_ENTRIES = insert(CHANGES)
# Entries numbered per pass; a pass that finds more leaves them to the next.
SEQUENCE_BATCH = 1000
_PENDING = select(Change.id).where(Change.position.is_(None)).order_by(Change.id)
_ANY_PENDING = _PENDING.limit(1)
_NUMBER = (
    update(CHANGES)
    .where(CHANGES.c.id == bindparam("p_id"))
    .values(position=bindparam("p_position"))
)
# PostgreSQL, under the pass's lock: number up to :p_limit pending entries after the counter
# and move the counter past them, in one statement. Only a pass (holding the lock) changes the
# counter, so the value this statement's snapshot reads is the current one. `last` is NULL when
# the counter row is missing (id 1 is _COUNTER_ID).
_PG_NUMBER = text(
    """
    WITH counter AS (
        SELECT last_position FROM garmin_change_counter WHERE id = 1
    ), pending AS (
        SELECT id, row_number() OVER (ORDER BY id) AS rank
        FROM garmin_session_change WHERE position IS NULL ORDER BY id LIMIT :p_limit
    ), numbered AS (
        UPDATE garmin_session_change AS entry
        SET position = counter.last_position + pending.rank
        FROM pending, counter WHERE entry.id = pending.id
        RETURNING entry.position
    ), moved AS (
        UPDATE garmin_change_counter
        SET last_position = last_position + (SELECT count(*) FROM numbered)
        WHERE id = 1
        RETURNING last_position
    )
    SELECT (SELECT count(*) FROM numbered) AS numbered, (SELECT last_position FROM moved) AS last
    """
)
TIMES = (
    "last_validated_at",
    "access_token_expires_at",
    "refresh_token_expires_at",
    "last_synced_at",
    "synced_through",
    "last_sync_attempt_at",
    "invalidated_at",
    "updated_at",
)


@dataclass(frozen=True)
class SequencePass:
    """What one sequencing pass did: how many entries it numbered, and whether it found the
    lock held by another replica's pass (which may have started before our entries were
    committed: try again shortly)."""

    numbered: int
    busy: bool = False


class SqlChangeLog:
    """The change log on one SQLAlchemy session (one transaction). Never commits."""

    def __init__(self, session: Executor) -> None:
        self.session = session

    def sequence_pending(self, *, limit: int = SEQUENCE_BATCH, wait: bool = False) -> int:
        """Number the committed entries that have no position yet; how many (see the module's
        docstring). `wait`: wait for a pass under way instead of leaving the work to it, so
        that everything committed before the call is numbered when it returns: passes of
        `limit` entries each, until one finds fewer (a backlog of more than one pass, as after
        the sequencers lagged behind a burst, is numbered whole)."""
        if not wait:
            return self.sequence_pass(limit=limit).numbered
        numbered = 0
        while True:
            done = self.sequence_pass(limit=limit, wait=True).numbered
            numbered += done
            if done < limit:
                return numbered

    def sequence_pass(self, *, limit: int = SEQUENCE_BATCH, wait: bool = False) -> SequencePass:
        """sequence_pending, also saying whether another replica's pass held the lock."""
        postgresql = dialect_name(self.session) == "postgresql"
        # The sequencer passes only when woken by a commit: on PostgreSQL it goes straight
        # for the lock (one statement less per pass); a watch's start checks first.
        if (wait or not postgresql) and self.session.execute(_ANY_PENDING).first() is None:
            return SequencePass(0)
        # One pass at a time, and the others do not queue: the pass under way, or the next
        # (the next commit's, a follower's poll), numbers their entries too. SQLite
        # serialises writers anyway.
        if postgresql and wait:
            self.session.execute(_LOCK)
        elif postgresql and not self.session.execute(_TRY_LOCK).scalar_one():
            return SequencePass(0, busy=True)
        if postgresql:
            # A new statement, after the lock: it sees every entry committed before it.
            numbered, last = self.session.execute(_PG_NUMBER, {"p_limit": limit}).one()
            if last is None:  # no counter row: recreated below, then numbered as on SQLite
                numbered = self._number_stepwise(limit)
        else:
            numbered = self._number_stepwise(limit)
        if postgresql and numbered:
            self.session.execute(_NOTIFY)
        return SequencePass(numbered)

    def _number_stepwise(self, limit: int) -> int:
        """Read the counter, number the pending entries after it, move it: three statements
        (SQLite cannot modify rows in a WITH clause; PostgreSQL uses _PG_NUMBER)."""
        last = self._advance(0)
        if last is None:
            self._recreate_counter()
            last = self._advance(0)
            assert last is not None
        ids = list(self.session.scalars(_PENDING.limit(limit)))
        if not ids:
            return 0
        self.session.execute(
            _NUMBER,
            [{"p_id": entry, "p_position": last + 1 + offset} for offset, entry in enumerate(ids)],
        )
        self._advance(len(ids))
        return len(ids)

    def _advance(self, count: int) -> int | None:
        return self.session.execute(
            update(Counter)
            .where(Counter.id == _COUNTER_ID)
            .values(last_position=Counter.last_position + count)
            .returning(Counter.last_position)
        ).scalar_one_or_none()

    def _recreate_counter(self) -> None:
        """The migration creates the counter's row; should it be gone (a table emptied by
        hand), it starts again after the last position kept."""
        kept = self.session.execute(select(func.max(Change.position))).scalar_one_or_none()
        insert_ignoring_conflict(
            self.session,
            cast(Table, Counter.__table__),
            {"id": _COUNTER_ID, "last_position": kept or 0},
        )

    def head(self) -> int:
        """The last position handed out (every position up to it is committed)."""
        return head_of(self.session)

    def prune_boundary(self, cutoff: datetime) -> int:
        """The first position prune-audit keeps: that of the oldest entry not older than
        `cutoff`, or one past the head when every numbered entry is.

        Only a prefix of the log is deleted, by position: an entry is numbered after its
        commit, and its occurred_at is its transaction's start on its replica's clock, so an
        older entry can hold a later position than a newer one. Deleting by age alone could
        leave a gap above the first kept position, which ChangeBatch.first_kept (and so
        CURSOR_EXPIRED) would not see. Read once per run: the prefix below it only grows, and
        entries numbered later are above it."""
        # The head first: an entry another replica numbers between the two reads is then
        # above it, kept, whether or not the second read sees it.
        past_head = self.head() + 1
        first_young = self.session.execute(
            select(Change.position)
            .where(Change.occurred_at >= cutoff, Change.position.is_not(None))
            .order_by(Change.position)
            .limit(1)
        ).scalar_one_or_none()
        return past_head if first_young is None else min(int(first_young), past_head)

    def delete_before(self, boundary: int, *, after: int, limit: int) -> tuple[int, int]:
        """Delete up to `limit` entries at positions after `after` and before `boundary`,
        oldest first: how many, and the last position deleted (`after` when none). Each batch
        starts where the last one ended, so it reads its own entries from the position index,
        not the prefix deleted before it."""
        batch = (
            select(Change.id, Change.position)
            .where(Change.position > after, Change.position < boundary)
            .order_by(Change.position)
            .limit(limit)
        )
        found = self.session.execute(batch).all()
        if not found:
            return 0, after
        ids = [row.id for row in found]
        self.session.execute(
            delete(Change).where(Change.id.in_(ids)),
            execution_options={"synchronize_session": False},
        )
        return len(ids), int(found[-1].position)

    def read_after(self, position: int, wanted: ChangeFilter, *, limit: int) -> ChangeBatch:
        """Up to `limit` entries after `position` that `wanted` matches, in position order.

        The head is read first and bounds the read: every entry up to it is committed and
        visible, so a filtered read that found fewer than `limit` has looked through it.
        The oldest kept position is read after the entries: every statement sees its own
        snapshot, and pruning removes a prefix, so a prune committed between the reads shows
        in first_kept (read before the entries, it hid the pruned range, which the caller
        then skipped as if it had read it). An empty log that got entries meanwhile does not
        count as pruned either way."""
        head = self.head()
        # Core rows, not ORM objects: this repository may run on a Core connection.
        query = select(*CHANGES.c).where(Change.position > position, Change.position <= head)
        if wanted.states:
            query = query.where(Change.state.in_(sorted(s.value for s in wanted.states)))
        if wanted.user_id is not None:
            query = query.where(Change.user_id == wanted.user_id)
        if wanted.user_id_prefix is not None:
            query = query.where(starts_with(Change.user_id, wanted.user_id_prefix))
        rows = list(self.session.execute(query.order_by(Change.position).limit(limit)))
        oldest = self.session.execute(select(func.min(Change.position))).scalar_one_or_none()
        last = rows[-1].position if rows else None
        read_through = last if last is not None and len(rows) == limit else max(head, position)
        return ChangeBatch(
            changes=[_change(row) for row in rows],
            read_through=read_through,
            first_kept=int(oldest) if oldest is not None else head + 1,
        )


def entry_rows(
    pending: Sequence[PendingChange], sessions: SqlSessionRepository
) -> list[dict[str, Any]]:
    """The column values of `pending`'s entries, without a position, each with the status
    this transaction leaves: the one the use case handed over, else read back now (call at
    the end of the transaction)."""
    return [
        {
            "position": None,
            "occurred_at": change.occurred_at,
            "user_id": change.user_id,
            "rpc": change.rpc,
            "state": status.state.value,
            "status": encode_status(status),
        }
        for change, status in ((change, _status_left(sessions, change)) for change in pending)
    ]


def head_of(session: Executor) -> int:
    last = session.execute(
        select(Counter.last_position).where(Counter.id == _COUNTER_ID)
    ).scalar_one_or_none()
    if last is None:  # no counter row: nothing was ever numbered after the last kept entry
        last = session.execute(select(func.max(Change.position))).scalar_one_or_none()
    return int(last or 0)


def _status_left(sessions: SqlSessionRepository, change: PendingChange) -> SessionStatusView:
    if change.status is not None:
        return change.status
    row = sessions.find(change.user_id, change.occurred_at)
    if row is None:
        return SessionStatusView(user_id=change.user_id, state=SessionState.NOT_CONNECTED)
    return status_view(row, change.occurred_at)


def _change(row: Row[Any]) -> SessionChange:
    assert row.position is not None  # only numbered entries are read
    return SessionChange(
        position=row.position,
        occurred_at=row.occurred_at,
        rpc=row.rpc,
        status=decode_status(row.status),
    )


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def encode_status(status: SessionStatusView) -> str:
    """The status as JSON; the lease loses its id (a holder's key, never shown to readers)."""
    document: dict[str, Any] = {
        "user_id": status.user_id,
        "state": status.state.value,
        "session_version": status.session_version,
        "kind": status.kind.value if status.kind else None,
        "invalidated_reason": status.invalidated_reason,
        **{name: _time(getattr(status, name)) for name in TIMES},
    }
    if status.lease is not None:
        document["lease"] = {
            # The non-secret reference only: the log is read by viewers.
            "lease_ref": status.lease.lease_ref,
            "holder": status.lease.holder,
            "fencing_token": status.lease.fencing_token,
            "acquired_at": status.lease.acquired_at.isoformat(),
            "expires_at": status.lease.expires_at.isoformat(),
        }
    return json.dumps(document, separators=(",", ":"))


def decode_status(value: str) -> SessionStatusView:
    document = json.loads(value)
    lease = document.get("lease")
    time = {name: _parse_time(document[name]) for name in TIMES}
    return SessionStatusView(
        user_id=document["user_id"],
        state=SessionState(document["state"]),
        session_version=document["session_version"],
        kind=SessionKind(document["kind"]) if document["kind"] else None,
        invalidated_reason=document["invalidated_reason"],
        last_validated_at=time["last_validated_at"],
        access_token_expires_at=time["access_token_expires_at"],
        refresh_token_expires_at=time["refresh_token_expires_at"],
        last_synced_at=time["last_synced_at"],
        synced_through=time["synced_through"],
        last_sync_attempt_at=time["last_sync_attempt_at"],
        invalidated_at=time["invalidated_at"],
        updated_at=time["updated_at"],
        lease=None
        if lease is None
        else LeaseView(
            # lease_ref() of a reference is the reference itself (a prefix of the digest).
            lease_digest=lease.get("lease_ref", ""),
            user_id=document["user_id"],
            holder=lease["holder"],
            fencing_token=lease["fencing_token"],
            acquired_at=datetime.fromisoformat(lease["acquired_at"]),
            expires_at=datetime.fromisoformat(lease["expires_at"]),
        ),
    )
