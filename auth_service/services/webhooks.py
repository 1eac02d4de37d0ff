"""Webhooks: every change of the log POSTed to GARMIN_AUTH_WEBHOOK_URL, at least once, in
position order, by one replica at a time (issue 16).

The change log is the durable outbox: it is written in the transaction of every change, so
a restart loses nothing. The webhook cursor (one row) says how far the receiver accepted; it
moves only after a 2xx, so a crash between the POST and the cursor's update sends that change
again (at-least-once: receivers de-duplicate by cursor). A failed POST waits out a backoff that
doubles up to a maximum, kept in the cursor row so every replica honours it, and the same
change is tried again: nothing after it is sent first.

One replica at a time: a pass first claims the cursor row with a lease that outlasts one POST
(connect and read timeouts) with a margin, and renews it before every POST; a replica whose
claim was taken over stops before its next POST. The payload is the change as
WatchSessionEvents shows it: cursor, rpc, when, and the status (never a secret or a lease id).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

from auth_service.domain.change_ports import WebhookClaim, WebhookSender, WebhookUndelivered
from auth_service.domain.changes import ChangeFilter, SessionChange, WebhookSettings, format_cursor
from auth_service.domain.models import SessionStatusView
from auth_service.services.unit_of_work import UnitsOfWork

log = logging.getLogger(__name__)

# Changes read per query; a pass goes on until it caught up, failed or lost its claim.
READ_BATCH = 100


def replica_name() -> str:
    """Names this replica in the claim: host and pid, so operators can read who delivers,
    and a random part, so two replicas in one process (tests) are two claimants."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class WebhookDelivery:
    """One delivery pass (run every poll_seconds by every replica)."""

    def __init__(
        self,
        uow: UnitsOfWork,
        sender: WebhookSender,
        settings: WebhookSettings,
        replica: str | None = None,
    ) -> None:
        self._uow = uow
        self._sender = sender
        self._settings = settings
        self._replica = replica or replica_name()
        # Set when the replica stops: a pass ends after the POST in flight, not at the end of
        # the backlog (which a slow receiver can make longer than the pod's grace).
        self._halting = threading.Event()

    def halt(self) -> None:
        """End the current pass after its POST in flight; no new pass delivers anything."""
        self._halting.set()

    @property
    def replica(self) -> str:
        """This replica's name in the claim."""
        return self._replica

    def run_once(self) -> int:
        """Deliver what is due; the number of changes the receiver accepted."""
        if self._halting.is_set():
            return 0
        claim = self._claim()
        if claim is None:
            return 0
        if claim.next_attempt_at is not None and self._uow.now() < claim.next_attempt_at:
            return 0
        delivered, through, attempts = 0, claim.delivered_through, claim.attempts
        while True:
            read = self._read_after(through)
            if read is None:
                return delivered
            through, changes = read
            for change in changes:
                if self._halting.is_set() or not self._deliver(change, through, attempts):
                    return delivered
                through, attempts = change.position, 0
                delivered += 1
            if len(changes) < READ_BATCH:
                return delivered

    def _read_after(self, through: int) -> tuple[int, list[SessionChange]] | None:
        """The next changes after `through`, moved over a pruned gap first (the new `through`
        with them); None when the claim was lost meanwhile."""
        with self._uow() as uow:
            batch = uow.changes.read_after(through, ChangeFilter(), limit=READ_BATCH)
            first_kept = batch.first_kept
            if through + 1 < first_kept:
                # prune-audit got there first (webhooks off, or the receiver down, for longer
                # than the retention): those changes are gone. Said once, loudly, and the
                # cursor moves over the gap so that it is said only once.
                log.error(
                    "webhooks: changes after cursor %s up to %s were pruned before delivery; "
                    "the receiver must read the statuses (ListSessions) to catch up",
                    format_cursor(through),
                    format_cursor(first_kept - 1),
                )
                if not uow.webhook_cursor.delivered(self._replica, first_kept - 1):
                    return None
                through = first_kept - 1
        return through, batch.changes

    def _deliver(self, change: SessionChange, through: int, attempts: int) -> bool:
        """POST one change and record it; False when the pass must end (the claim lost or
        its cursor moved by another replica, or the receiver failed)."""
        current = self._claim()
        if current is None or current.delivered_through != through:
            # Lost the claim, or lost it and got it back after another replica delivered
            # meanwhile: never send (and record) from a stale position.
            return False
        try:
            self._sender.send(webhook_body(change))
        except WebhookUndelivered as failure:
            self._failed(change, attempts + 1, failure)
            return False
        # Any other error of the sender's (one that breaks its contract) is a failed attempt
        # all the same: escaping, it would end the pass before the attempt and its backoff are
        # recorded, and every poll would try again at once, for ever. Only the type is said:
        # a message could quote the URL, and the credentials in it.
        except Exception as exc:  # noqa: BLE001
            self._failed(change, attempts + 1, WebhookUndelivered(type(exc).__name__))
            return False
        with self._uow() as uow:
            return uow.webhook_cursor.delivered(self._replica, change.position)

    def _claim(self) -> WebhookClaim | None:
        now = self._uow.now()
        until = now + timedelta(seconds=self._settings.claim_seconds)
        with self._uow() as uow:
            return uow.webhook_cursor.claim(self._replica, now=now, until=until)

    def _failed(self, change: SessionChange, attempts: int, failure: WebhookUndelivered) -> None:
        delay = self._settings.backoff(attempts)
        with self._uow() as uow:
            uow.webhook_cursor.failed(
                self._replica, attempts=attempts, next_attempt_at=uow.now + delay
            )
        log.warning(
            "webhook for cursor %s not delivered (%s; attempt %d); next try in %.0f s",
            format_cursor(change.position),
            failure,
            attempts,
            delay.total_seconds(),
        )

    def release(self) -> None:
        """Give the claim up (the replica is stopping): another replica takes over at once."""
        with self._uow() as uow:
            uow.webhook_cursor.release(self._replica)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _status(status: SessionStatusView) -> dict[str, Any]:
    document: dict[str, Any] = {
        "user_id": status.user_id,
        "state": status.state.value,
        "session_version": status.session_version,
        "kind": status.kind.value if status.kind else None,
        "last_validated_at": _time(status.last_validated_at),
        "access_token_expires_at": _time(status.access_token_expires_at),
        "refresh_token_expires_at": _time(status.refresh_token_expires_at),
        "last_synced_at": _time(status.last_synced_at),
        "synced_through": _time(status.synced_through),
        "last_sync_attempt_at": _time(status.last_sync_attempt_at),
        "invalidated_reason": status.invalidated_reason,
        "invalidated_at": _time(status.invalidated_at),
        "updated_at": _time(status.updated_at),
        "lease": None,
    }
    if status.lease is not None:
        # The holder's name and fencing token; never the lease id (the holder's key).
        document["lease"] = {
            "holder": status.lease.holder,
            "lease_ref": status.lease.lease_ref,
            "fencing_token": status.lease.fencing_token,
            "acquired_at": _time(status.lease.acquired_at),
            "expires_at": _time(status.lease.expires_at),
        }
    return document


def webhook_body(change: SessionChange) -> bytes:
    """The JSON a receiver gets for one change (README: Webhooks)."""
    document = {
        "cursor": format_cursor(change.position),
        "rpc": change.rpc,
        "occurred_at": change.occurred_at.isoformat(),
        "status": _status(change.status),
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
