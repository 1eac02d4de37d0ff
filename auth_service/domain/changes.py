"""The session change stream's values (WatchSessionEvents, webhooks; issue 16).

Every committed audit event that records a change of one user's session (outcome OK, a
user named) also appends one entry to the change log, in the same transaction, with the
session's status as that transaction left it. Entries are numbered by `position`: a number
that grows by one per entry, in commit order, with no gap and no duplicate
(auth_service.storage.change_log says how). The cursor a caller sees is that position as a
decimal string; callers treat it as opaque.

Refusals the audit trail records (LOGIN_RATE_LIMITED, MFA_CODE_REJECTED, LEASE_LOST) changed
nothing and are not in the change log. An entry never holds a secret or a lease id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from auth_service.domain.errors import FieldViolation
from auth_service.domain.models import SessionState, SessionStatusView

# Positions are stored as 64-bit integers: a larger cursor cannot be one.
MAX_POSITION = 2**63 - 1
MAX_CURSOR_DIGITS = len(str(MAX_POSITION))


@dataclass(frozen=True)
class PendingChange:
    """A change an audit event recorded, waiting for its position at commit."""

    user_id: str
    rpc: str
    occurred_at: datetime
    # The status the transaction leaves, when the use case holds the row its last statement
    # returned; None: the change log reads it back before the commit.
    status: SessionStatusView | None = None


@dataclass(frozen=True)
class SessionChange:
    """One entry of the change log: the status a committed change left behind."""

    position: int
    occurred_at: datetime
    rpc: str
    status: SessionStatusView


@dataclass(frozen=True)
class Heartbeat:
    """Nothing new (for this filter) up to `position`: sent once a watch has caught up with
    the log, and on idle streams, so proxies keep them open and a filtered watcher's cursor
    moves on with the log."""

    position: int


@dataclass(frozen=True)
class ChangeFilter:
    """Which entries a watcher wants: any of `states` (empty: all), one user or a scope."""

    states: frozenset[SessionState] = frozenset()
    user_id: str | None = None
    # A scoped caller (callers file user_id_prefix) sees only its users.
    user_id_prefix: str | None = None


@dataclass(frozen=True)
class ChangeBatch:
    """Entries after a position, and how far the read looked (the log's head at the time
    when fewer than asked were found): the position to read after next time."""

    changes: list[SessionChange]
    read_through: int
    # The oldest position still in the log (head + 1 when it is empty): a reader whose
    # position is below first_kept - 1 has lost entries to pruning.
    first_kept: int


def format_cursor(position: int) -> str:
    return str(position)


def parse_cursor(cursor: str, field: str) -> tuple[int | None, list[FieldViolation]]:
    """The position after which to replay; None for "" (only new changes)."""
    if cursor == "":
        return None, []
    if (
        not cursor.isascii()
        or not cursor.isdigit()
        or len(cursor) > MAX_CURSOR_DIGITS
        or int(cursor) > MAX_POSITION
    ):
        return None, [FieldViolation(field, "is not a cursor this service issued")]
    return int(cursor), []


@dataclass(frozen=True)
class StreamSettings:
    """GARMIN_AUTH_MAX_WATCHERS, _STREAM_HEARTBEAT, _STREAM_POLL, _STREAM_SEND_TIMEOUT."""

    max_watchers: int = 8
    heartbeat_seconds: float = 15.0
    # How often a follower reads the log without being woken (SQLite: the only way it learns
    # of other processes' changes; PostgreSQL: a safety net under LISTEN/NOTIFY).
    poll_seconds: float = 1.0
    # A consumer that leaves one event unsent this long is cut off (api.stream_guard).
    send_timeout_seconds: float = 30.0


@dataclass(frozen=True)
class WebhookSettings:
    """GARMIN_AUTH_WEBHOOK_*: no URL, no webhooks."""

    # May carry credentials (user:password@): never shown (repr) or logged.
    url: str | None = field(default=None, repr=False)
    # The HMAC key of the signature header; never shown (repr) or logged.
    secret: bytes = field(default=b"", repr=False)
    timeout_seconds: float = 10.0
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    # How often every replica looks for changes to deliver (only the claimant sends).
    poll_seconds: float = 1.0

    @property
    def claim_seconds(self) -> float:
        # One POST takes at most a connect and a read timeout; twice that, and a margin.
        return 4 * self.timeout_seconds + 10.0

    def backoff(self, attempts: int) -> timedelta:
        delay = self.backoff_initial_seconds * 2 ** min(attempts - 1, 30)
        return timedelta(seconds=min(delay, self.backoff_max_seconds))
