"""The change log's positions follow commit order with no gap, whatever order its entries'
ids were handed out in (auth_service.storage.change_log explains why ids would not do)."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.audit import NewAuditEvent
from auth_service.domain.changes import ChangeFilter, PendingChange
from auth_service.storage.change_log import entry_rows
from auth_service.storage.change_sequencer import sequence_all
from auth_service.storage.database import session_factory
from auth_service.storage.models import GarminSessionChange
from auth_service.storage.secrets import SecretBox
from auth_service.storage.session_repository import SqlSessionRepository
from auth_service.storage.trail_writer import write_trail
from auth_service.storage.unit_of_work import SqlStore

WRITERS = 4
CHANGES_EACH = 15


def _event(user_id: str) -> NewAuditEvent:
    return NewAuditEvent(
        occurred_at=datetime.now(UTC),
        caller="test",
        rpc="ImportSession",
        user_id=user_id,
        outcome_code="OK",
        outcome_reason="OK",
    )


def _read_all(store: SqlStore, db: sessionmaker[Session], after: int) -> tuple[list[int], int]:
    """What a follower sees: (a sequencing pass, as every replica's sequencer runs them, then)
    a read after its cursor."""
    sequence_all(db)
    with store.transaction() as transaction:
        batch = transaction.changes.read_after(after, ChangeFilter(), limit=1000)
    return [change.position for change in batch.changes], batch.read_through


def test_a_follower_sees_every_position_once_under_concurrent_writers(
    engine: Engine, keyring: Keyring
) -> None:
    db = session_factory(engine)
    store = SqlStore(db, SecretBox(keyring))
    done = threading.Event()
    seen: list[int] = []
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for number in range(CHANGES_EACH):
                with store.transaction() as transaction:
                    transaction.audit_events.add(_event(f"w{writer}-{number}"))
                    time.sleep(random.uniform(0, 0.02))  # noqa: S311
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    def follow() -> None:
        after = 0
        while not done.is_set() or after < WRITERS * CHANGES_EACH:
            read, after = _read_all(store, db, after)
            seen.extend(read)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    follower = threading.Thread(target=follow)
    follower.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    done.set()
    follower.join(timeout=60)
    assert not failures
    total = WRITERS * CHANGES_EACH
    assert seen == list(range(1, total + 1))
    with store.transaction() as transaction:
        assert transaction.changes.head() == total


@pytest.mark.postgres
def test_an_entry_committed_late_is_not_skipped(pg_database_url: str, keyring: Keyring) -> None:
    """Numbering by id, played out: the slow writer's entry takes id 1 and commits after
    the fast writer's (id 2). A follower that read in between must still get it afterwards."""
    engine = create_engine(pg_database_url)
    db = session_factory(engine)
    store = SqlStore(db, SecretBox(keyring))
    slow = db()
    slow.begin()
    write_trail(
        slow,
        [],
        entry_rows(
            [PendingChange("slow", "ImportSession", datetime.now(UTC))],
            SqlSessionRepository(slow, SecretBox(keyring)),
        ),
    )
    slow.flush()
    with store.transaction() as transaction:
        transaction.audit_events.add(_event("fast"))
    assert _read_all(store, db, 0) == ([1], 1)
    slow.commit()
    slow.close()
    assert _read_all(store, db, 1) == ([2], 2)
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                GarminSessionChange.id, GarminSessionChange.position, GarminSessionChange.user_id
            ).order_by(GarminSessionChange.id)
        ).all()
    # Ids in insertion order, positions in commit order.
    assert [(row.position, row.user_id) for row in rows] == [(2, "slow"), (1, "fast")]
    engine.dispose()
