"""Housekeeping that time causes, run in the background by every replica, done by one.

Each pass, in one transaction: expired MFA challenges are deleted (with the SSO cookies they
hold), MFA_PENDING sessions whose challenge is gone are settled (reads already show them
settled; this writes it), and login counters whose window has ended and account cooldowns
(after Garmin's 429) that have ended are dropped. On PostgreSQL
a replica that finds another one's pass in progress skips its own (Store.exclusive), so the
replicas never repeat each other's deletes. Nothing here is audited: no RPC changed anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from auth_service.domain.audit import AuditedRpc
from auth_service.domain.clock import Clock
from auth_service.domain.policies import LoginSettings
from auth_service.domain.repositories import Store

log = logging.getLogger(__name__)

LOCK_NAME = "garmin-auth.housekeeping"


@dataclass(frozen=True)
class HousekeepingReport:
    """What one pass did; `ran` is False when another replica's pass held the lock."""

    ran: bool
    challenges_deleted: int = 0
    sessions_settled: int = 0
    throttles_deleted: int = 0
    cooldowns_deleted: int = 0


class Housekeeping:
    """One pass of housekeeping."""

    def __init__(self, store: Store, clock: Clock, login: LoginSettings) -> None:
        self._store = store
        self._clock = clock
        self._window = timedelta(seconds=login.window_seconds)

    def run_once(self) -> HousekeepingReport:
        now = self._clock.now()
        with self._store.exclusive(LOCK_NAME) as transaction:
            if transaction is None:
                return HousekeepingReport(ran=False)
            # Rows before challenges, the order every writer of both takes (DeleteSession,
            # SubmitMfa): the other way round, a pass deadlocks with them on PostgreSQL. A row
            # is settled once no live challenge is left, deleted yet or not.
            settled = transaction.sessions.settle_abandoned_mfa(now)
            for user_id in settled:
                # The status callers read changed (MFA_PENDING is over): the change stream
                # says so too, or a consumer waiting for the sign-in's outcome waits for ever.
                transaction.audit_events.add_change(user_id, AuditedRpc.HOUSEKEEPING, now)
            report = HousekeepingReport(
                ran=True,
                challenges_deleted=transaction.challenges.delete_expired(now),
                sessions_settled=len(settled),
                throttles_deleted=transaction.throttle.purge_stale(now, self._window),
                cooldowns_deleted=transaction.limits.purge_ended(now),
            )
        if (
            report.challenges_deleted
            or report.sessions_settled
            or report.throttles_deleted
            or report.cooldowns_deleted
        ):
            log.info(
                "housekeeping: %d expired MFA challenge(s) deleted, %d abandoned MFA "
                "session(s) settled, %d stale login counter(s) and %d ended cooldown(s) "
                "deleted",
                report.challenges_deleted,
                report.sessions_settled,
                report.throttles_deleted,
                report.cooldowns_deleted,
            )
        return report
