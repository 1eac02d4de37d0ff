"""A run: N threads, each leasing a user and syncing it, until the users are done.

``--user`` leases the named users (LeaseSession); ``--all`` drains what LeaseNextSession
hands out until nothing is due, the deadline passes, or the run is interrupted, and never
syncs a user twice in one run. Each finished user prints one JSON line on ``out``; the run
ends with a summary line. The exit code follows CronJob semantics (see ``exit_code``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import grpc

from sync_worker.client import AuthClient, Release
from sync_worker.client_errors import (
    GARMIN_RATE_LIMITED,
    GARMIN_UNAVAILABLE,
    LEASE_HELD,
    LEASE_LOST,
    MALFORMED_GRANT,
    SESSION_NOT_ACTIVE,
    AuthServiceError,
)
from sync_worker.config import WorkerConfig
from sync_worker.connect_apis import ConnectApis
from sync_worker.control import RunControl
from sync_worker.directory_sink import DirectorySink
from sync_worker.lease_grants import LeasedSession
from sync_worker.postgres_sink import PostgresSink
from sync_worker.progress import Progress
from sync_worker.renewals import Renewals
from sync_worker.sinks import Sink
from sync_worker.sync import Outcome, PendingRelease, UserResult, UserSync, release_now

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_AUTH_SERVICE: Final = 3
EXIT_GARMIN_UNAVAILABLE: Final = 4
EXIT_SIGTERM: Final = 143
# --all: a thread gives up after this many LeaseNextSession failures in a row that no other
# rule covers (exit 1).
MAX_GRANT_FAILURES: Final = 3
_POLL_SECONDS: Final = 0.2
# What LeaseNextSession answers about its grant, after a release it carried was done (the
# README's error table; MALFORMED_GRANT is the worker's own, about the granted token).
GRANT_REASONS: Final = frozenset(
    {GARMIN_RATE_LIMITED, GARMIN_UNAVAILABLE, SESSION_NOT_ACTIVE, MALFORMED_GRANT}
)


@dataclass(frozen=True)
class RunReport:
    results: tuple[UserResult, ...]
    seconds: float
    exit_code: int
    fatal: AuthServiceError | None
    stopped: bool
    # Why the run gave up on Garmin (too many users in a row failed by its being down).
    garmin_outage: str | None = None
    # The service refused the run's own settings (exit 2).
    settings_refused: AuthServiceError | None = None
    # Why a --all thread gave up on LeaseNextSession (exit 1).
    drain_failure: str | None = None

    @property
    def summary(self) -> dict[str, int]:
        return summarize(self.results)


def summarize(results: tuple[UserResult, ...] | list[UserResult]) -> dict[str, int]:
    counts = Counter(result.outcome for result in results)
    return {outcome.value: counts.get(outcome, 0) for outcome in Outcome}


def exit_code(results: list[UserResult], control: RunControl) -> int:
    """143 after SIGTERM; 3 when the auth service was unreachable or refused us; 4 when the
    run gave up on Garmin (unavailable for too many users in a row); 1 when any user FAILED,
    a sync thread died of a bug, or a --all thread gave up on LeaseNextSession; else 0
    (AUTH_EXPIRED, RATE_LIMITED, LEASE_LOST are normal life, and a failing Job would only
    make Kubernetes hit Garmin again)."""
    if control.stop_requested:
        return EXIT_SIGTERM
    if control.fatal is not None:
        return EXIT_AUTH_SERVICE
    if control.settings_refused is not None:
        return EXIT_CONFIG
    if control.garmin_outage is not None:
        return EXIT_GARMIN_UNAVAILABLE
    gave_up = control.crashed or control.drain_failure is not None
    if gave_up or any(result.outcome is Outcome.FAILED for result in results):
        return EXIT_FAILED
    return EXIT_OK


class _Run:
    def __init__(
        self,
        config: WorkerConfig,
        client: AuthClient,
        sink: Sink,
        control: RunControl,
        out: TextIO,
        progress: Progress,
    ) -> None:
        self.config = config
        self.client = client
        self.sink = sink
        self.control = control
        self.out = out
        self.progress = progress
        self.lock = threading.Lock()
        self.results: list[UserResult] = []
        self.seen: set[str] = set()
        self.queue = list(dict.fromkeys(config.users))
        # One timer renews every lease of the run (sync_worker.renewals).
        self.renewals = Renewals(config.concurrency)

    # --- results -------------------------------------------------------------------------

    def emit(self, result: UserResult, *, was_running: bool = True) -> None:
        with self.lock:
            self.results.append(result)
            self.out.write(json.dumps(result.as_json()) + "\n")
            self.out.flush()
        self.progress.user_finished(result, was_running=was_running)

    def sync(self, leased: LeasedSession, leased_at: float, connect_apis: ConnectApis) -> None:
        self.progress.user_started()
        self.emit(self._user_sync(leased, leased_at, connect_apis).run())

    def sync_until_release(
        self, leased: LeasedSession, leased_at: float, connect_apis: ConnectApis
    ) -> PendingRelease | None:
        """Sync a user; its release, when one is due, is left pending (emitted once done)."""
        self.progress.user_started()
        synced = self._user_sync(leased, leased_at, connect_apis).run_until_release()
        if isinstance(synced, PendingRelease):
            return synced
        self.emit(synced)
        return None

    def _user_sync(
        self, leased: LeasedSession, leased_at: float, connect_apis: ConnectApis
    ) -> UserSync:
        return UserSync(
            self.client,
            leased,
            self.sink,
            self.config.sync,
            self.control,
            connect_apis=connect_apis,
            renewals=self.renewals,
            leased_at=leased_at,
        )

    # --- --user ID ... ---------------------------------------------------------------------

    def next_named(self) -> str | None:
        with self.lock:
            return self.queue.pop(0) if self.queue else None

    def named_loop(self) -> None:
        with self._connect_apis() as connect_apis:
            self._named_loop(connect_apis)

    def _connect_apis(self) -> ConnectApis:
        """A sync thread's Connect API clients: each GET bounded as a whole, and cut when
        the run is interrupted (a stop must not wait for an answer trickling in)."""
        return ConnectApis(
            self.config.sync.upstream,
            call_seconds=self.config.sync.garmin_call_timeout,
            cancel=self.control.interruption,
        )

    def _named_loop(self, connect_apis: ConnectApis) -> None:
        while self.control.may_take_users():
            user = self.next_named()
            if user is None:
                return
            if not self.control.wait_for_garmin():
                return
            leased_at = time.monotonic()
            try:
                leased = self.client.lease_session(
                    user, self.config.holder, self.config.sync.lease_ttl
                )
            except AuthServiceError as exc:
                self.refused(user, exc)
                continue
            self.sync(leased, leased_at, connect_apis)

    def refused(self, user: str, exc: AuthServiceError) -> None:
        """LeaseSession said no: say what that means for the user (or stop the run)."""
        if exc.fatal:
            self.control.fail(exc)
            return
        if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
            # The user id passed the service's own rule when the run was configured, so the
            # refusal is of the run's settings (holder, ttl): every user would be refused
            # alike. Exit 2 with one line, as --all does.
            self.control.refuse_settings(exc)
            return
        outcome = Outcome.FAILED
        if exc.reason in (LEASE_HELD, LEASE_LOST):
            # Someone else is syncing this user right now.
            outcome = Outcome.LEASE_LOST
        elif exc.reason == SESSION_NOT_ACTIVE:
            # Not connected any more (or the service's refresh was just rejected).
            outcome = Outcome.AUTH_EXPIRED
        elif exc.reason == GARMIN_RATE_LIMITED:
            if not exc.about_user:
                # Garmin's word on every account (a 429, an open breaker): the run pauses.
                # One account's cooldown (ErrorInfo scope=user) holds back that user alone.
                self.control.slow_down(exc.retry_after)
            outcome = Outcome.RATE_LIMITED
        elif exc.garmin_unavailable:
            # The service's refresh for the grant found Garmin down (or slower than the call).
            # Not Garmin's doubtful 401 to this user's garth session (scope=user): FAILED,
            # and no outage counted, so such users in a row do not stop the run.
            self.control.garmin_unavailable(f"LeaseSession for {user}")
        self.emit(UserResult(user, outcome, detail=f"LeaseSession: {exc}"), was_running=False)

    # --- --all -------------------------------------------------------------------------

    def drain_loop(self) -> None:
        with self._connect_apis() as connect_apis:
            self._drain_loop(connect_apis)

    def _drain_loop(self, connect_apis: ConnectApis) -> None:
        failures = 0
        # The last user synced, whose release rides on the next LeaseNextSession.
        pending: PendingRelease | None = None
        try:
            while self.control.may_take_users():
                if pending is not None and self.control.pause_remaining() > 0:
                    # Do not hold a synced user's lease through Garmin's pause.
                    self.emit(release_now(self.client, pending, self.control))
                    pending = None
                if not self.control.wait_for_garmin():
                    return
                leased_at = time.monotonic()
                carried_release = pending is not None
                try:
                    leased = self.lease_next(pending)
                except AuthServiceError as exc:
                    pending = None  # settled by lease_next
                    failures = self.next_refused(exc, failures, carried_release=carried_release)
                    if failures >= MAX_GRANT_FAILURES:
                        return
                    continue
                pending = None  # released by that call
                failures = 0
                if leased is None:
                    return  # nothing is due
                with self.lock:
                    again = leased.user_id in self.seen
                    self.seen.add(leased.user_id)
                if again:
                    # Everything more overdue than a user we already did is done: hand it back.
                    self.release_unused(leased)
                    return
                pending = self.sync_until_release(leased, leased_at, connect_apis)
        finally:
            if pending is not None:
                self.emit(release_now(self.client, pending, self.control))

    def next_refused(
        self, exc: AuthServiceError, failures: int, *, carried_release: bool = False
    ) -> int:
        """LeaseNextSession failed: act on it; returns the failures in a row that count
        towards MAX_GRANT_FAILURES (the limit itself when the loop must stop now)."""
        if exc.fatal:
            self.control.fail(exc)
            return MAX_GRANT_FAILURES
        if exc.code == grpc.StatusCode.INVALID_ARGUMENT and not carried_release:
            # A call carrying no release names only the run's settings (holder, ttl,
            # min_sync_interval): every call would be refused alike; say so and exit 2.
            self.control.refuse_settings(exc)
            return MAX_GRANT_FAILURES
        if exc.reason == GARMIN_RATE_LIMITED:
            if not exc.about_user:
                self.control.slow_down(exc.retry_after)
            return failures
        if exc.garmin_unavailable:
            # Counted with the run's other Garmin outages (backoff, then give up).
            self.control.garmin_unavailable("LeaseNextSession")
            return failures
        if exc.lease_lost:
            return failures  # the release it carried was refused; nothing was granted
        log.warning("LeaseNextSession failed: %s", exc)
        failures += 1
        if failures >= MAX_GRANT_FAILURES:
            # Giving up is no "nothing was due": a CronJob must not read success here.
            self.control.drain_failed(
                f"LeaseNextSession failed {failures} times in a row (last: {exc})"
            )
        return failures

    def lease_next(self, pending: PendingRelease | None) -> LeasedSession | None:
        """LeaseNextSession, releasing `pending` with it; settles `pending` whatever happens
        (raises what the grant, or the refused release, answered)."""
        config = self.config
        release = (
            None
            if pending is None
            else Release(pending.lease_id, pending.synced_through, pending.garmin_retry_after)
        )
        try:
            leased = self.client.lease_next_session(
                config.holder, config.sync.lease_ttl, config.min_sync_interval, release
            )
        except AuthServiceError as exc:
            if pending is not None:
                released = release_outcome(exc)
                if released is None or exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                    # The answer does not say (lost on the way), or the call was refused
                    # before anything was done: release it alone (release_now also copes
                    # with a synced_through the service refuses).
                    self.emit(release_now(self.client, pending, self.control))
                else:
                    self.emit(pending.settle(None if released else exc, self.control))
            raise
        if pending is not None:
            self.emit(pending.result)
        return leased

    def release_unused(self, leased: LeasedSession) -> None:
        try:
            self.client.release_lease(leased.lease_id, None)
        except AuthServiceError as exc:
            if exc.fatal:
                self.control.fail(exc)

    # --- the pool ------------------------------------------------------------------------

    def run(self) -> None:
        loop: Callable[[], None] = self.drain_loop if self.config.all_users else self.named_loop
        threads = self.config.concurrency
        if not self.config.all_users:
            threads = min(threads, len(self.queue))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sync") as pool:
            futures: set[Future[None]] = {pool.submit(loop) for _ in range(threads)}
            # Poll rather than block, so the main thread keeps handling signals and progress.
            while futures:
                done, futures = wait(futures, timeout=_POLL_SECONDS, return_when=FIRST_EXCEPTION)
                for future in done:
                    error = future.exception()
                    if error is not None:
                        # A bug in a loop: stop taking users, let the others end cleanly.
                        log.error("a sync thread failed", exc_info=error)
                        self.control.thread_crashed()
                self.progress.tick()


def run(
    config: WorkerConfig,
    *,
    out: TextIO,
    err: TextIO,
    control: RunControl | None = None,
    client: AuthClient | None = None,
    sink: Sink | None = None,
) -> RunReport:
    """One run of the worker. Raises SinkError when the sink cannot take writes at all."""
    started = time.monotonic()
    control = control or RunControl(
        config.max_runtime,
        max_garmin_unavailable=config.max_garmin_unavailable,
        max_rate_limit_pause=config.rate_limit_max_wait,
    )
    own_client = client is None
    own_sink = sink is None
    client = client or AuthClient(config.auth)
    sink = sink or open_sink(config.out_dir, config.sink_url)
    try:
        sink.check()
        progress = Progress(
            err,
            total=None if config.all_users else len(set(config.users)),
            interval=config.progress_interval,
        )
        state = _Run(config, client, sink, control, out, progress)
        try:
            state.run()
        finally:
            state.renewals.close()
            progress.close()
    finally:
        if own_client:
            client.close()
        if own_sink:
            sink.close()
    seconds = time.monotonic() - started
    results = list(state.results)
    out.write(
        json.dumps(
            {"summary": summarize(results), "users": len(results), "seconds": round(seconds, 3)}
        )
        + "\n"
    )
    out.flush()
    return RunReport(
        results=tuple(results),
        seconds=seconds,
        exit_code=exit_code(results, control),
        fatal=control.fatal,
        stopped=control.stop_requested,
        garmin_outage=control.garmin_outage,
        settings_refused=control.settings_refused,
        drain_failure=control.drain_failure,
    )


def release_outcome(exc: AuthServiceError) -> bool | None:
    """Whether a LeaseNextSession carrying a release, which failed with `exc`, released:
    True when the service answered about the grant (the release came first and stood), False
    when it refused the release or the call itself, None when the answer does not say."""
    if exc.lease_lost or exc.credentials_refused:
        return False
    if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
        return False  # every field is checked before anything is done
    if exc.reason in GRANT_REASONS:
        return True
    return None


def open_sink(out_dir: Path | None, sink_url: str | None) -> Sink:
    """The sink the command line chose (exactly one of the two is set)."""
    if sink_url is not None:
        return PostgresSink(sink_url)
    assert out_dir is not None
    return DirectorySink(out_dir)
