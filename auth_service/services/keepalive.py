"""Keep-alive: DI sessions are refreshed before their refresh token dies unused.

A DI refresh token that is not used for about 30 days dies, and with it the session of a
user who simply did not sync. Each pass takes the ACTIVE DI sessions whose refresh token dies
within the window, or at an unknown time (tokens imported as given), soonest first, skipping
sessions under a live lease (their holder's grant refreshes them when needed), and refreshes
them through the single-flight refresher without waiting on anyone's claim. On PostgreSQL the
replica that finds another one choosing its batch skips its pass (Store.exclusive); replicas
whose passes overlap anyway never refresh a session twice, because each refresh is claimed.
Garth sessions are left alone: their OAuth1 token lives about a year whatever we do.

Keep-alive is the one caller that could hammer Garmin on its own, so it is the most careful
one: its refreshes start at most `keepalive_rate` per second per replica, spaced with jitter;
an account waiting out a 429 is skipped; and the first 429 of a pass, or an open breaker of
the token endpoint, ends the pass: the rest waits for the next one
(auth_service.services.garmin_gate). A session it (or anyone) refreshed is not picked again
before half its refresh token's remaining life, at most half the window (a refresh that
leaves the expiry inside the window would otherwise be repeated every pass:
auth_service.domain.policies.keepalive_not_before), and one whose refresh failed not for
`keepalive_retry_seconds` (sessions that fail every time would otherwise fill every pass).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminSessionRejected,
    ReplicaStopping,
    SessionNotActive,
)
from auth_service.domain.policies import RefreshSettings, keepalive_retry_at
from auth_service.domain.repositories import KeepAliveCandidate
from auth_service.services.session_refresh import RefreshAsker, RefreshBusy, SessionRefresher
from auth_service.services.unit_of_work import UnitsOfWork

log = logging.getLogger(__name__)

LOCK_NAME = "garmin-auth.keepalive"
KEEPALIVE_REJECTED = "Garmin rejected the session when keep-alive refreshed it"
_ASKER = RefreshAsker(AuditedRpc.KEEP_ALIVE, reason_for=lambda _message: KEEPALIVE_REJECTED)


@dataclass(frozen=True)
class KeepAliveReport:
    """What one pass did; `ran` is False when another replica was choosing its batch."""

    ran: bool
    # Refreshed by this pass.
    refreshed: int = 0
    # Claimed, leased or refreshed elsewhere meanwhile, or no longer active.
    skipped: int = 0
    # Garmin unavailable (5xx, timeout, a refused client id), a secret no key opens or an
    # unexpected failure: keep-alive tries again after keepalive_retry_seconds.
    failed: int = 0
    # Garmin rejected the refresh: the session is AUTH_EXPIRED.
    ended: int = 0
    # Left for the next pass: Garmin asked us to wait (a 429, a cooldown, an open breaker)
    # or the replica is stopping.
    deferred: int = 0


class KeepAlive:
    """One keep-alive pass."""

    def __init__(
        self, uow: UnitsOfWork, refresher: SessionRefresher, settings: RefreshSettings
    ) -> None:
        self._uow = uow
        self._refresher = refresher
        self._settings = settings
        self._halting = threading.Event()

    def halt(self) -> None:
        """Stop starting refreshes (the replica is stopping); the pass in progress ends
        after the refreshes already under way."""
        self._halting.set()

    def run_once(self) -> KeepAliveReport:
        now = self._uow.now()
        with self._uow.store.exclusive(LOCK_NAME) as transaction:
            if transaction is None:
                return KeepAliveReport(ran=False)
            candidates = transaction.refreshes.keepalive_candidates(
                now=now,
                dies_before=now + timedelta(seconds=self._settings.keepalive_window_seconds),
                limit=self._settings.keepalive_batch,
            )
        if not candidates:
            return KeepAliveReport(ran=True)
        results = self._refresh_paced(candidates)
        report = KeepAliveReport(
            ran=True,
            refreshed=results["refreshed"],
            skipped=results["skipped"],
            failed=results["failed"],
            ended=results["ended"],
            deferred=results["deferred"] + len(candidates) - results.total(),
        )
        log.info(
            "keep-alive: %d DI session(s) refreshed, %d skipped, %d failed, %d ended by "
            "Garmin, %d left for the next pass",
            report.refreshed,
            report.skipped,
            report.failed,
            report.ended,
            report.deferred,
        )
        return report

    def _refresh_paced(self, candidates: list[KeepAliveCandidate]) -> Counter[str]:
        """Start the candidates' refreshes at the configured rate, with jitter, until
        Garmin pushes back or the replica stops."""
        pushed_back = threading.Event()
        # As many at once as the refresher lets reach Garmin; it bounds them anyway.
        workers = min(self._settings.concurrency, len(candidates))
        started: list[Future[str]] = []
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keepalive") as pool:
            for candidate in candidates:
                if started and self._pause(pushed_back):
                    break
                started.append(pool.submit(self._keep, candidate, pushed_back))
        return Counter(future.result() for future in started)

    def _pause(self, pushed_back: threading.Event) -> bool:
        """Wait for the next start (jittered around 1/rate); True to stop starting."""
        rate = self._settings.keepalive_rate
        # Not cryptographic: only spreads the calls over time.
        pause = random.uniform(0.5, 1.5) / rate if rate > 0 else 0.0  # noqa: S311
        deadline = time.monotonic() + pause
        while True:
            if pushed_back.is_set() or self._halting.is_set():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pushed_back.wait(min(left, 0.1))

    def _keep(self, candidate: KeepAliveCandidate, pushed_back: threading.Event) -> str:
        if pushed_back.is_set() or self._halting.is_set():
            return "deferred"  # queued before the pushback: not started
        return self._refresh_one(candidate, pushed_back)

    def _refresh_one(self, candidate: KeepAliveCandidate, pushed_back: threading.Event) -> str:
        try:
            refreshed = self._refresher.refresh_unless_claimed(
                candidate.user_id, candidate.session_version, _ASKER
            )
        except (RefreshBusy, SessionNotActive, ReplicaStopping):
            return "skipped"
        except GarminSessionRejected:
            return "ended"
        except GarminRateLimited as limited:
            if not limited.only_this_account:
                # A 429, or an open breaker: Garmin wants less from us; the next pass
                # takes the rest.
                pushed_back.set()
            log.info("keep-alive of user %s deferred (%s)", candidate.user_id, limited.message)
            return "deferred"
        # GarminUnavailable (5xx, timeout, a refused client id), SecretUnreadable or anything
        # unexpected; one session's failure must not stop the pass.
        except Exception as exc:  # noqa: BLE001
            self._hold_back(candidate, type(exc).__name__)
            return "failed"
        return "refreshed" if refreshed.by_us else "skipped"

    def _hold_back(self, candidate: KeepAliveCandidate, failure: str) -> None:
        """Leave a session whose refresh failed alone for keepalive_retry_seconds, so the
        ones that fail every time cannot fill every pass (RefreshSettings); one whose refresh
        token dies sooner, for half the time it has left (keepalive_retry_at)."""
        retry = timedelta(seconds=self._settings.keepalive_retry_seconds)
        try:
            with self._uow() as uow:
                until = keepalive_retry_at(candidate.refresh_token_expires_at, uow.now, retry)
                uow.refreshes.defer_keepalive(
                    candidate.user_id, version=candidate.session_version, until=until
                )
                wait = (until - uow.now).total_seconds()
        # Then it is simply tried again next pass; only the type is logged (driver messages
        # can echo connection parameters).
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "keep-alive of user %s failed (%s), not held back (%s)",
                candidate.user_id,
                failure,
                type(exc).__name__,
            )
            return
        log.warning(
            "keep-alive of user %s failed (%s); retried in %.0f s", candidate.user_id, failure, wait
        )
