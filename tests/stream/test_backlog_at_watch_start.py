"""A watch from an empty cursor sends "only changes committed from now on" (README, proto),
and its first heartbeat tells where the stream stands. Its start numbers every committed entry
still without a position (SessionEvents: sequence_pending(wait=True)), so that the head it
starts from is past all of them.

Before, that was one sequencing pass of at most SEQUENCE_BATCH (1000) entries: with a larger
backlog (sequencers lagging behind a burst) the head left the rest above it, and the watch
then streamed changes committed before it started; prune-audit's boundary relied on the same
single pass. Found by a read-only review."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from auth_service.crypto import Keyring
from auth_service.domain.audit import NewAuditEvent
from auth_service.domain.changes import ChangeFilter, Heartbeat, SessionChange
from auth_service.domain.clock import SystemClock
from auth_service.services.session_events import SessionEvents
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.change_log import SEQUENCE_BATCH
from auth_service.storage.change_sequencer import sequence_all
from auth_service.storage.change_signal import LocalChangeSignal
from auth_service.storage.database import session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from tests.stream.conftest import FAST_STREAM

BACKLOG = SEQUENCE_BATCH + 200


def test_an_empty_cursor_watch_gets_no_change_committed_before_it(
    engine: Engine, keyring: Keyring
) -> None:
    db = session_factory(engine)
    store = SqlStore(db, SecretBox(keyring))  # no sequencer: the backlog stays unnumbered
    with store.transaction() as transaction:
        for number in range(BACKLOG):
            transaction.audit_events.add(
                NewAuditEvent(
                    occurred_at=datetime.now(UTC),
                    caller="test",
                    rpc="ImportSession",
                    user_id=f"before-{number}",
                    outcome_code="OK",
                    outcome_reason="OK",
                )
            )
    signal = LocalChangeSignal()
    events = SessionEvents(UnitsOfWork(store, SystemClock()), signal, FAST_STREAM)
    watching = iter(events.watch("", ChangeFilter()))
    first = next(watching)
    assert isinstance(first, Heartbeat)
    # The replica's sequencer numbers what is left, as it would a moment later.
    sequence_all(db)
    signal.wake()
    second = next(watching)
    events.stop()
    assert not isinstance(second, SessionChange), (
        f"a watch from an empty cursor (first heartbeat at {first.position}) then streamed "
        f"position {second.position}, user {second.status.user_id!r}: a change committed "
        f"before the watch started ({BACKLOG} were pending; its start numbered only "
        f"{SEQUENCE_BATCH})"
    )
