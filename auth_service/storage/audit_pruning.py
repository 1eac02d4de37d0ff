"""Pruning the audit trail: delete events older than the retention, in short batches."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from auth_service.storage.audit_repository import SqlAuditRepository
from auth_service.storage.change_log import SqlChangeLog
from auth_service.storage.database import session_factory

log = logging.getLogger(__name__)

# Audit events prune_audit deletes per transaction.
PRUNE_BATCH_SIZE = 1000


def prune_audit(
    engine: Engine,
    older_than: timedelta,
    *,
    batch_size: int = PRUNE_BATCH_SIZE,
    now: datetime | None = None,
) -> int:
    """Delete the audit events that occurred before `now - older_than`; returns how many.

    Deletes oldest first, `batch_size` events per short transaction, so a large backlog never
    holds a long lock and an interrupted run keeps what it already deleted. Safe to run while
    the service serves (new events are never old enough to match).
    """
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = (now or datetime.now(UTC)) - older_than
    db = session_factory(engine)
    deleted = 0
    while True:
        with db.begin() as session:
            batch = SqlAuditRepository(session).delete_older_than(cutoff, limit=batch_size)
        deleted += batch
        if batch < batch_size:
            break
    changes = 0
    # The change log (WatchSessionEvents, webhooks) is kept as long as the audit trail. Its
    # entries are deleted by position, so the committed ones still waiting for theirs (the
    # sequencers gather commits for a few milliseconds) are numbered first.
    with db.begin() as session:
        changes_table = SqlChangeLog(session)
        changes_table.sequence_pending(wait=True)
        boundary = changes_table.prune_boundary(cutoff)
    after = 0
    while True:
        with db.begin() as session:
            batch, after = SqlChangeLog(session).delete_before(
                boundary, after=after, limit=batch_size
            )
        changes += batch
        if batch < batch_size:
            break
    log.info(
        "audit pruned: %d event(s) and %d change log entr(ies) before %s deleted",
        deleted,
        changes,
        cutoff.isoformat(),
    )
    return deleted
