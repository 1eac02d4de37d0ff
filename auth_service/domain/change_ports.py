"""What the change stream and the webhooks need from storage and the outside (issue 16):
the change log and the webhook cursor (repositories of one transaction), the signal that
wakes followers, and the HTTP sender of webhooks. auth_service.domain.changes has the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from auth_service.domain.changes import ChangeBatch, ChangeFilter


class ChangeLogRepository(Protocol):
    """The change log (garmin_session_change), numbered in commit order."""

    def sequence_pending(self, *, wait: bool = False) -> int:
        """Number committed entries still without a position (storage.change_log); how many.
        Every replica's sequencer does it in the background; a watch does it once at its
        start (`wait`: after any pass under way), so what it replays, or the head it starts
        from, includes every change committed before it began."""
        ...

    def head(self) -> int:
        """The last position handed out; every position up to it is committed."""
        ...

    def read_after(self, position: int, wanted: ChangeFilter, *, limit: int) -> ChangeBatch: ...


@dataclass(frozen=True)
class WebhookClaim:
    """The webhook cursor as the replica that claimed it found it."""

    delivered_through: int
    attempts: int
    next_attempt_at: datetime | None


class WebhookCursorRepository(Protocol):
    """How far webhooks were delivered, claimed by one replica at a time (with a lease)."""

    def claim(self, replica: str, *, now: datetime, until: datetime) -> WebhookClaim | None:
        """Take or extend the claim until `until`; None while another replica holds it."""
        ...

    def delivered(self, replica: str, position: int) -> bool:
        """Record delivery through `position`; False when the claim was lost meanwhile."""
        ...

    def failed(self, replica: str, *, attempts: int, next_attempt_at: datetime) -> bool: ...

    def release(self, replica: str) -> None: ...


class ChangeSignal(Protocol):
    """Wakes followers when the change log may have grown (PostgreSQL: LISTEN/NOTIFY; every
    backend: this replica's own commits). The log stays the truth: followers read it after
    every wake-up and at least every poll interval."""

    def generation(self) -> int:
        """A number that grows with every wake-up; read it before reading the log."""
        ...

    def wait(self, seen: int, timeout: float) -> None:
        """Return when the generation moved past `seen`, or after `timeout` seconds."""
        ...

    def wake(self) -> None:
        """Wake every waiter (a commit of this replica, a stream ending, the replica stopping)."""
        ...

    def close(self) -> None:
        """Stop listening (the replica stopped)."""
        ...


class WebhookUndelivered(Exception):
    """The receiver did not accept a webhook (no answer, or not a 2xx). The message names the
    answer, never the secret or the body."""


class WebhookSender(Protocol):
    """POSTs one signed webhook body to the configured receiver."""

    def send(self, body: bytes) -> None:
        """Raises WebhookUndelivered unless the receiver answered 2xx."""
        ...
