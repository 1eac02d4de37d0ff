"""Keep-alive: DI sessions are refreshed before their refresh token dies unused.

A DI refresh token that is not used for about 30 days dies, and with it the session of a
user who simply did not sync. Each pass takes the ACTIVE DI sessions whose refresh token dies
within the window, or at an unknown time (tokens imported as given): those in their refresh
token's last stretch first, soonest first (policies.keepalive_last_stretch), then those with
fewer failed keep-alive attempts first, then soonest first (unknown first), skipping sessions
under a live lease (their holder's grant refreshes them when needed), and refreshes them
through the single-flight refresher without waiting on anyone's claim. On PostgreSQL the
replica that finds another one choosing its batch skips its pass (Store.exclusive); replicas
whose passes overlap anyway never refresh a session twice, because each refresh is claimed,
nor one the other's pass held back meanwhile: the claim reads the hold-back as it is then.
Garth sessions are left alone: their OAuth1 token lives about a year whatever we do.

Keep-alive is the one caller that could hammer Garmin on its own, so it is the most careful
one: its refreshes start at most `keepalive_rate` per second per replica, spaced with jitter,
each only once one of its workers is free (handed to a busy pool instead, the refreshes a slow
Garmin held up would all start at once when it answers again); an account waiting out a 429
is skipped without spending a start, and left alone until its cooldown ends; a few refreshes
in a row that find Garmin unavailable end the pass (OUTAGE_FAILURES_ENDING_A_PASS); and the
first 429 of a pass, or an open breaker of the token endpoint, ends the pass: the rest waits
for the next one (auth_service.services.garmin_gate). A session it (or anyone) refreshed is
not picked again before half its refresh token's remaining life, at most half the window
(a refresh that leaves the expiry inside the window would otherwise be repeated every pass:
auth_service.domain.policies.keepalive_not_before). One whose refresh failed, or met Garmin's
429, counts one more failed attempt (keepalive_failures, 0 again once new tokens are stored)
and is not picked for `keepalive_retry_seconds`, doubled for each earlier failed attempt up
to a day, and never before its account's cooldown ends (policies.keepalive_retry_at). Sessions
that fail every time, or accounts Garmin blocks for days, would otherwise head every pass:
a batch of them fills every pass, a 429 of theirs ends every pass, before anyone behind them
is refreshed. Counted, they go behind every session that has not failed; such a session's
429 still ends the pass, but only once the healthier ones have been started, and less and
less often, until its last stretch: there it is taken by expiry again (a session that met one
passing 503 would otherwise wait out any backlog of healthy ones and die), tried a handful of
times as its hold-back halves.
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
    ReplicaStopping,
    SessionNotActive,
)
from auth_service.domain.events import ServiceEvents, listening
from auth_service.domain.policies import (
    RefreshSettings,
    keepalive_last_stretch,
    keepalive_retry_steps,
)
from auth_service.domain.repositories import KeepAliveCandidate
from auth_service.services.refresh_askers import RefreshSlotsBusy, StillRefreshingElsewhere
from auth_service.services.session_refresh import RefreshAsker, RefreshBusy, SessionRefresher
from auth_service.services.unit_of_work import UnitsOfWork

log = logging.getLogger(__name__)

LOCK_NAME = "garmin-auth.keepalive"
KEEPALIVE_REJECTED = "Garmin rejected the session when keep-alive refreshed it"
_ASKER = RefreshAsker(AuditedRpc.KEEP_ALIVE, reason_for=lambda _message: KEEPALIVE_REJECTED)
# How often a pass waiting for its next start looks for a pushback or a stop.
_POLL_SECONDS = 0.1
# Refreshes in a row that found Garmin unavailable (5xx, timeouts) before a pass ends: during
# an outage the rest of the batch would only add to Garmin's load, each failing in turn (and
# each counting a failed attempt against its session); the next pass tries again.
OUTAGE_FAILURES_ENDING_A_PASS = 3


class _OutageCount:
    """The pass's refreshes in a row that found Garmin unavailable (its workers share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_a_row = 0

    def unavailable(self) -> bool:
        """One more; True once they are enough to end the pass."""
        with self._lock:
            self._in_a_row += 1
            return self._in_a_row >= OUTAGE_FAILURES_ENDING_A_PASS

    def answered(self) -> None:
        with self._lock:
            self._in_a_row = 0


@dataclass(frozen=True)
class KeepAliveReport:
    """What one pass did; `ran` is False when another replica was choosing its batch."""

    ran: bool
    # Refreshed by this pass.
    refreshed: int = 0
    # Claimed, leased or refreshed elsewhere meanwhile, or no longer active.
    skipped: int = 0
    # Garmin unavailable (5xx, timeout, a refused client id), a secret no key opens or an
    # unexpected failure: keep-alive tries again after keepalive_retry_seconds (doubled for
    # each earlier failed attempt).
    failed: int = 0
    # Garmin rejected the refresh: the session is AUTH_EXPIRED.
    ended: int = 0
    # Left for a later pass: Garmin asked us to wait (a 429 or a cooldown: the session is
    # held back until the cooldown ends, after a 429 as after a failure too; an open
    # breaker) or the replica is stopping.
    deferred: int = 0


class KeepAlive:
    """One keep-alive pass."""

    def __init__(
        self,
        uow: UnitsOfWork,
        refresher: SessionRefresher,
        settings: RefreshSettings,
        events: ServiceEvents | None = None,
    ) -> None:
        # Hears the pass's requests to Garmin (service_events() is the RPC's listener, and
        # a pass runs outside any RPC).
        self._events = events
        self._uow = uow
        self._refresher = refresher
        self._settings = settings
        self._halting = threading.Event()

    def halt(self) -> None:
        """Stop starting refreshes (the replica is stopping); the pass in progress ends
        after the refreshes already under way."""
        self._halting.set()

    def run_once(self) -> KeepAliveReport:
        if self._events is None:
            return self._run_once()
        with listening(self._events):
            return self._run_once()

    def _run_once(self) -> KeepAliveReport:
        now = self._uow.now()
        with self._uow.store.exclusive(LOCK_NAME) as transaction:
            if transaction is None:
                return KeepAliveReport(ran=False)
            candidates = transaction.refreshes.keepalive_candidates(
                now=now,
                dies_before=now + timedelta(seconds=self._settings.keepalive_window_seconds),
                last_stretch=now + keepalive_last_stretch(self._settings),
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
        """Start the candidates' refreshes, each once a worker is free and at most at the
        configured rate (with jitter), until Garmin pushes back or the replica stops. Only
        a refresh that may reach Garmin spends a start: one whose account waits out a
        cooldown is passed over at once."""
        pushed_back = threading.Event()
        outage = _OutageCount()
        # As many at once as the refresher lets reach Garmin; it bounds them anyway.
        workers = min(self._settings.concurrency, len(candidates))
        free = threading.Semaphore(workers)
        passed_over: Counter[str] = Counter()
        started: list[Future[str]] = []
        next_start = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keepalive") as pool:
            for candidate in candidates:
                if not self._wait_turn(free, next_start, pushed_back):
                    break
                if self._refused(candidate, pushed_back):
                    free.release()
                    passed_over["deferred"] += 1
                    if pushed_back.is_set():
                        break
                    continue
                # In this thread's context (a copy each, as one context cannot be entered by
                # two threads at once): whoever listens for its calls to Garmin hears them.
                run = contextvars.copy_context().run
                started.append(pool.submit(run, self._keep, candidate, pushed_back, free, outage))
                next_start = time.monotonic() + self._spacing()
        return passed_over + Counter(future.result() for future in started)

    def _spacing(self) -> float:
        """Seconds from one start to the next: jittered around 1/rate."""
        rate = self._settings.keepalive_rate
        # Not cryptographic: only spreads the calls over time.
        return random.uniform(0.5, 1.5) / rate if rate > 0 else 0.0  # noqa: S311

    def _wait_turn(
        self, free: threading.Semaphore, next_start: float, pushed_back: threading.Event
    ) -> bool:
        """Wait for the next start and a free worker (taken); False to stop starting."""
        while not (pushed_back.is_set() or self._halting.is_set()):
            left = next_start - time.monotonic()
            if left > 0:
                pushed_back.wait(min(left, _POLL_SECONDS))
            elif free.acquire(timeout=_POLL_SECONDS):
                if not (pushed_back.is_set() or self._halting.is_set()):
                    return True
                free.release()
        return False

    def _refused(self, candidate: KeepAliveCandidate, pushed_back: threading.Event) -> bool:
        """Whether the gate refuses the candidate's refresh now (Garmin not called): its
        account's cooldown holds it back until the cooldown ends; an open breaker ends the
        pass. Read before a start is spent, so a batch of cooling accounts at the head of
        the order costs a pass no time."""
        try:
            refusal = self._refresher.refusal(candidate.user_id)
        # The refresh reads the same again and fails on its own terms (held back then).
        except Exception:  # noqa: BLE001
            return False
        if refusal is None:
            return False
        self._deferred(candidate, refusal, pushed_back)
        return True

    def _keep(
        self,
        candidate: KeepAliveCandidate,
        pushed_back: threading.Event,
        free: threading.Semaphore,
        outage: _OutageCount,
    ) -> str:
        try:
            if pushed_back.is_set() or self._halting.is_set():
                return "deferred"  # handed over as the pass ended: not started
            return self._refresh_one(candidate, pushed_back, outage)
        finally:
            free.release()

    def _refresh_one(
        self, candidate: KeepAliveCandidate, pushed_back: threading.Event, outage: _OutageCount
    ) -> str:
        try:
            refreshed = self._refresher.refresh_unless_claimed(
                candidate.user_id, candidate.session_version, _ASKER
            )
        except (RefreshBusy, SessionNotActive, ReplicaStopping):
            return "skipped"
        except GarminSessionRejected:
            outage.answered()
            return "ended"
        except GarminRateLimited as limited:
            self._deferred(candidate, limited, pushed_back)
            return "deferred"
        # GarminUnavailable (5xx, timeout, a refused client id), SecretUnreadable or anything
        # unexpected; one session's failure must not stop the pass, Garmin's outage does.
        except Exception as exc:  # noqa: BLE001
            self._hold_back(candidate, f"failed ({type(exc).__name__})", failed=True)
            if _garmin_down(exc) and outage.unavailable():
                if not pushed_back.is_set():
                    log.warning(
                        "keep-alive: Garmin unavailable for %d refreshes in a row; the rest "
                        "waits for the next pass",
                        OUTAGE_FAILURES_ENDING_A_PASS,
                    )
                pushed_back.set()
            return "failed"
        if refreshed.by_us:
            outage.answered()
        return "refreshed" if refreshed.by_us else "skipped"

    def _deferred(
        self,
        candidate: KeepAliveCandidate,
        limited: GarminRateLimited,
        pushed_back: threading.Event,
    ) -> None:
        """Garmin asked us to wait. A 429 or an open breaker ends the pass (Garmin wants
        less from us; the next pass takes the rest): from one request Garmin cannot be told
        apart blocking one account from wanting fewer calls altogether, and going on past
        429s would soon open the breaker, refusing every account's sign-ins and refreshes.
        The session whose account is held back waits out the cooldown; the one Garmin
        answered 429 also counts a failed attempt and waits like a failed one, so it goes
        behind the sessions that have not failed (an account Garmin keeps refusing cannot
        end every pass before them) and is retried less and less often."""
        if not limited.only_this_account:
            pushed_back.set()
        if limited.held_back is None or limited.only_this_account:
            self._hold_back(
                candidate,
                f"deferred ({limited.message})",
                failed=limited.held_back is None,
                cooling_seconds=limited.retry_after_seconds or 0.0,
            )
        else:
            log.info("keep-alive of user %s deferred (%s)", candidate.user_id, limited.message)

    def _hold_back(
        self,
        candidate: KeepAliveCandidate,
        why: str,
        *,
        failed: bool,
        cooling_seconds: float = 0.0,
    ) -> None:
        """Leave the session alone until its account's cooldown ends and, when `failed`
        (its refresh failed, or met Garmin's 429), count the failed attempt and leave it for
        keepalive_retry_seconds, doubled for each earlier one, so the ones that fail every
        time cannot fill every pass (RefreshSettings); one whose refresh token dies sooner,
        for half the time it has left (keepalive_retry_at). One statement writes both, the
        wait from the count the row holds as it is written: another replica's overlapping
        pass may have counted a failure since this one chose the session."""
        retry_for = timedelta(seconds=self._settings.keepalive_retry_seconds)
        try:
            with self._uow() as uow:
                cooled = uow.now + timedelta(seconds=cooling_seconds)
                until: datetime | None = cooled
                if failed:
                    until = uow.refreshes.fail_keepalive(
                        candidate.user_id,
                        version=candidate.session_version,
                        until_after=[
                            max(cooled, retry_at)
                            for retry_at in keepalive_retry_steps(
                                candidate.refresh_token_expires_at, uow.now, retry_for
                            )
                        ],
                    )
                else:
                    uow.refreshes.defer_keepalive(
                        candidate.user_id, version=candidate.session_version, until=cooled
                    )
                wait = None if until is None else (until - uow.now).total_seconds()
        # Then it is simply tried again next pass; only the type is logged (driver messages
        # can echo connection parameters).
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "keep-alive of user %s %s, not held back (%s)",
                candidate.user_id,
                why,
                type(exc).__name__,
            )
            return
        if wait is None:
            log.info("keep-alive of user %s %s; its session moved on", candidate.user_id, why)
            return
        log.warning("keep-alive of user %s %s; retried in %.0f s", candidate.user_id, why, wait)


def _garmin_down(exc: Exception) -> bool:
    """Garmin itself failed the refresh (5xx, a timeout, an unreadable answer), as opposed to
    this replica's own limits (its refresh slots, another replica's claim)."""
    return isinstance(exc, GarminUnavailable) and not isinstance(
        exc, RefreshSlotsBusy | StillRefreshingElsewhere
    )
