"""One user's sync under a lease: Load (the lease) - Use (Garmin) - Update (report, release).

1. The lease brings an access token (nothing longer-lived); every Garmin call sends it as a
   bearer to connectapi.<domain> (sync_worker.leased_api), and a refused or expired token is
   replaced once through RefreshLease.
2. Activity summaries are paged from ``synced_through - overlap`` (first run: ``now -
   backfill``), newest first; with files, each activity's original file too.
3. Each item is written to the sink idempotently, after checking the lease is still ours;
   once the window is read, the sink makes them durable together (``commit()``); a sync
   that fails part-way commits what it stored too, unless its lease was lost.
4. ReleaseLease with synced_through = start of the newest activity safely stored, only when
   the whole window was read (a partial read must not move it past unread activities). A
   worker draining the due sessions sends that release with its next LeaseNextSession (one
   call instead of two: ``UserSync.run_until_release`` leaves it pending).

Outcomes follow what Garmin and the service answered: a definite rejection is AUTH_EXPIRED
(ReportInvalidated, which ends the lease; unless the service's own refresh found the session
dead, which already ended it); 429 is RATE_LIMITED (and pauses the whole run; the release
reports the Connect API's 429 with its Retry-After, capped, so the service holds the user
back for every run and replica until it has passed);
5xx/timeouts are retried a bounded number of times (by garmin_client.retry, the one retry
layer), then FAILED, and counted as an outage by the run (sync_worker.control: backoff, then
the run gives up); LEASE_LOST from any call or
a fencing refusal from the sink is LEASE_LOST, and nothing more is written.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import grpc

from garmin_client.errors import (
    FileTooLarge,
    NotFound,
    RateLimited,
    SessionRejected,
    Unavailable,
)
from garmin_client.settings import UpstreamSettings
from sync_worker.activity_list import parse_activity
from sync_worker.client import AuthClient
from sync_worker.client_errors import AuthServiceError
from sync_worker.connect_apis import ConnectApis
from sync_worker.control import RunControl
from sync_worker.keeper import LeaseGone, LeaseKeeper
from sync_worker.lease_grants import LeasedSession
from sync_worker.leased_api import (
    LeasedApi,
    ServiceRateLimited,
    SessionEndedByService,
    SessionInDoubt,
)
from sync_worker.renewals import Renewals
from sync_worker.sinks import (
    Activity,
    FencingRefused,
    Sink,
    SinkError,
    UnsafeUserId,
    UserSink,
)

log = logging.getLogger(__name__)

ACTIVITIES_PATH: Final = "/activitylist-service/activities/search/activities"
DOWNLOAD_PREFIX: Final = "/download-service/files/activity/"
# Garmin filters the list by the activity's local date, which may be a day off UTC's.
LOCAL_DATE_SLACK: Final = timedelta(days=1)
# A runaway listing (Garmin ignoring the window) must end: this many activities in one read
# of the window (1,000 pages of 100, at any --page-size) is plenty.
MAX_LISTED_ACTIVITIES: Final = 100_000
# The longest one Connect API GET may take as a whole (GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT): an
# activity's original file at the 32 MiB cap (garmin_client.api_http) arrives within it at
# about 110 KB/s.
DEFAULT_GARMIN_CALL_TIMEOUT: Final = 300.0
# Reads of a user's window again from the top after the list moved under us, per sync.
MAX_LIST_REREADS: Final = 3

T = TypeVar("T")


class Outcome(enum.StrEnum):
    SYNCED = "SYNCED"
    NOTHING_NEW = "NOTHING_NEW"
    AUTH_EXPIRED = "AUTH_EXPIRED"
    RATE_LIMITED = "RATE_LIMITED"
    LEASE_LOST = "LEASE_LOST"
    FAILED = "FAILED"


@dataclass(frozen=True)
class SyncOptions:
    upstream: UpstreamSettings
    lease_ttl: timedelta = timedelta(minutes=5)
    backfill: timedelta = timedelta(days=30)
    overlap: timedelta = timedelta(days=1)
    with_files: bool = False
    page_size: int = 100
    renew_fraction: float = 1 / 3
    # The longest one Connect API GET may take, its retries and the answer's body included
    # (GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT; never less than the retry budget): an answer that
    # trickles in, each read within the timeout, must not hold a thread and its lease.
    garmin_call_timeout: float = DEFAULT_GARMIN_CALL_TIMEOUT


@dataclass(frozen=True)
class UserResult:
    user_id: str
    outcome: Outcome
    items: int = 0
    refreshed: bool = False
    seconds: float = 0.0
    # For stderr only (never a secret): why the outcome is what it is.
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "outcome": self.outcome.value,
            "items": self.items,
            "refreshed": self.refreshed,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, repr=False)
class PendingRelease:
    """A user whose sync is over and whose lease is still to be released: the worker hands it
    to its next LeaseNextSession (one call instead of two), or releases it alone."""

    lease_id: str
    # What the release reports: set only after a complete, durable read.
    synced_through: datetime | None
    # The user's result once the release is done.
    result: UserResult
    # Set when the sync stopped at the Connect API's 429: the wait it asked for (capped),
    # reported so that no worker run nor replica calls Garmin for the user before it ends.
    garmin_retry_after: float | None = None

    def __repr__(self) -> str:
        return f"PendingRelease(user_id={self.result.user_id!r})"

    def settle(self, refused: AuthServiceError | None, control: RunControl) -> UserResult:
        """The user's result once the release was answered (`refused` None: released)."""
        if refused is None:
            return self.result
        outcome, detail = rpc_failed(refused, "ReleaseLease", control)
        return dataclasses.replace(self.result, outcome=outcome, detail=detail)


def release_now(client: AuthClient, pending: PendingRelease, control: RunControl) -> UserResult:
    """ReleaseLease on its own; the user's final result."""
    try:
        client.release_lease(pending.lease_id, pending.synced_through, pending.garmin_retry_after)
    except AuthServiceError as exc:
        if exc.code != grpc.StatusCode.INVALID_ARGUMENT or pending.synced_through is None:
            return pending.settle(exc, control)
        # The service refused our synced_through (this machine's clock runs ahead of the
        # service's): end the lease anyway, as an attempt, rather than hold the user until
        # the ttl; the next run reads the same window again.
        log.warning(
            "user %s: the release was refused (%s); released without synced_through",
            pending.result.user_id,
            exc,
        )
        try:
            client.release_lease(pending.lease_id, None, pending.garmin_retry_after)
        except AuthServiceError as again:
            return pending.settle(again, control)
        return pending.settle(exc, control)
    return pending.result


def rpc_failed(exc: AuthServiceError, rpc: str, control: RunControl) -> tuple[Outcome, str]:
    """What a failed call to the service means for the user (and, if fatal, for the run)."""
    if exc.lease_lost:
        return Outcome.LEASE_LOST, f"{rpc} answered LEASE_LOST"
    if exc.fatal:
        control.fail(exc)
    return Outcome.FAILED, f"{rpc} failed: {exc.code.name} {exc.reason}".strip()


class _Interrupted(Exception):
    """The sync stops short for a reason that is not Garmin's being unavailable: the run is
    stopping (SIGTERM, auth service gone), Garmin's pause outlasts it, or the window's list
    did not end."""

    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class UserSync:
    """Syncs one leased user; ``run()`` always ends the lease's story (release, report, or
    knowing it is lost) and returns the user's result; ``run_until_release()`` ends it too,
    except that a plain release is handed back as a ``PendingRelease``."""

    def __init__(  # noqa: PLR0913 - the sync thread's collaborators and the grant, by name
        self,
        client: AuthClient,
        leased: LeasedSession,
        sink: Sink,
        options: SyncOptions,
        control: RunControl,
        *,
        connect_apis: ConnectApis,
        renewals: Renewals,
        leased_at: float,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._connect_apis = connect_apis
        self._leased = leased
        self._sink = sink
        self._options = options
        self._control = control
        self._now = now
        self._keeper = LeaseKeeper(
            client,
            leased.lease_id,
            options.lease_ttl,
            leased_at,
            control,
            renewals,
            fraction=options.renew_fraction,
        )
        self._items = 0
        self._newest: datetime | None = None
        self._refreshes = 0
        # The version of the session whose access token the sync used last (0: unknown).
        self._session_version = leased.access.session_version
        # The service's refresh invalidated the session: AUTH_EXPIRED with nothing to report.
        self._ended_by_service = False
        # The Connect API answered 429: the pause it imposed, for the release to report.
        self._garmin_retry_after: float | None = None

    def run(self) -> UserResult:
        """Sync the user and end the lease now."""
        synced = self.run_until_release()
        if isinstance(synced, PendingRelease):
            return release_now(self._client, synced, self._control)
        return synced

    def run_until_release(self) -> UserResult | PendingRelease:
        """Sync the user and end the lease, unless ending it is a plain release: that one is
        left pending, for the caller to hand to its next LeaseNextSession."""
        started = time.monotonic()
        try:
            outcome, detail = self._use()
        # A bug must cost one user, not the run, and must still end the lease.
        except Exception as exc:
            log.exception("user %s: unexpected %s", self._leased.user_id, type(exc).__name__)
            outcome, detail = Outcome.FAILED, f"internal error ({type(exc).__name__})"
        outcome, detail, release = self._update(outcome, detail)
        result = UserResult(
            user_id=self._leased.user_id,
            outcome=outcome,
            items=self._items,
            refreshed=self._refreshes > 0,
            seconds=time.monotonic() - started,
            detail=detail,
        )
        if not release:
            return result
        return PendingRelease(
            self._leased.lease_id,
            self._synced_through(outcome),
            result,
            garmin_retry_after=self._garmin_retry_after,
        )

    # --- Use: Garmin and the sink --------------------------------------------------------

    def _use(self) -> tuple[Outcome, str]:
        self._keeper.start()
        user_sink: UserSink | None = None
        access = self._leased.access
        try:
            connect_api = self._connect_apis.for_user(access.domain)
            api = LeasedApi(connect_api, self._client, self._leased.lease_id, access)
            try:
                user_sink = self._sink.for_user(self._leased.user_id, self._leased.fencing_token)
                self._read_window(api, user_sink)
                self._control.garmin_answered()
                # Not once the lease is known lost (a renewal answered LEASE_LOST after the
                # last write): the user may have disconnected, and nothing more is written.
                self._keeper.check()
                # Durable before ReleaseLease moves synced_through past these items.
                user_sink.commit()
                outcome = Outcome.SYNCED if self._items else Outcome.NOTHING_NEW
                detail = f"{self._items} new or changed"
            except SessionRejected as exc:
                outcome, detail = Outcome.AUTH_EXPIRED, str(exc)
            except SessionEndedByService as exc:
                self._ended_by_service = True
                outcome, detail = Outcome.AUTH_EXPIRED, str(exc)
            except RateLimited as exc:
                outcome, detail = self._rate_limited(exc)
            except Unavailable as exc:
                self._garmin_failed(exc)
                outcome, detail = Outcome.FAILED, str(exc)
            except (LeaseGone, FencingRefused) as exc:
                outcome, detail = Outcome.LEASE_LOST, str(exc)
            except _Interrupted as exc:
                outcome, detail = exc.outcome, str(exc)
            except (SinkError, UnsafeUserId) as exc:
                outcome, detail = Outcome.FAILED, f"sink: {exc}"
            except AuthServiceError as exc:
                # RefreshLease failed in a way that is about the service, not the user.
                outcome, detail = rpc_failed(exc, "RefreshLease", self._control)
            if user_sink is not None and outcome not in (Outcome.SYNCED, Outcome.NOTHING_NEW):
                self._keep_stored(user_sink, outcome)
            self._refreshes = api.refreshes
            self._session_version = api.session_version
        finally:
            if user_sink is not None:
                user_sink.close()
            self._keeper.stop()
        if self._keeper.lost and outcome is not Outcome.AUTH_EXPIRED:
            outcome, detail = Outcome.LEASE_LOST, "the service answered LEASE_LOST"
        return outcome, detail

    def _rate_limited(self, exc: RateLimited) -> tuple[Outcome, str]:
        """Garmin's 429: the whole run pauses (Retry-After, capped). One the Connect API gave
        this worker is also reported at the release, so that the service holds the user back
        for every run and replica until it has passed (one the service's refresh met, it
        holds back by itself). Only this account's cooldown (the service says so) pauses
        nothing else: the other users' calls are not Garmin's concern."""
        if isinstance(exc, ServiceRateLimited) and exc.only_this_account:
            return Outcome.RATE_LIMITED, str(exc)
        asked = exc.retry_after_seconds
        pause = self._control.slow_down(asked)
        if not isinstance(exc, ServiceRateLimited):
            # What Garmin asked for, as this run honours it; none (no header, 0, a date past)
            # is reported as zero, and the service holds the user back for its own default.
            self._garmin_retry_after = pause if asked is not None and asked > 0 else 0.0
        return Outcome.RATE_LIMITED, str(exc)

    def _keep_stored(self, user_sink: UserSink, outcome: Outcome) -> None:
        """A sync that failed part-way keeps what it stored (the sink's commit makes it
        durable and puts it in place), so a long first sync makes progress across runs;
        synced_through does not move, the release sees to that. Not once the lease is lost:
        then nothing more is written (and the fence would refuse it)."""
        if outcome is Outcome.LEASE_LOST or self._keeper.lost:
            return
        try:
            user_sink.commit()
        except (SinkError, FencingRefused) as exc:
            log.info("user %s: the failed sync's items not kept (%s)", self._leased.user_id, exc)

    def _window_start(self) -> datetime:
        previous = self._leased.synced_through
        if previous is None:
            return self._now() - self._options.backfill
        # Devices upload late: re-read the overlap; idempotent writes make it free.
        return previous - self._options.overlap

    def _read_window(self, api: LeasedApi, user_sink: UserSink) -> None:
        since = self._window_start() - LOCAL_DATE_SLACK
        until = self._now() + LOCAL_DATE_SLACK
        # The list is paged by offset, newest first, and may change between two pages. Each
        # page after the first also asks for the item before it, the last one read: if that
        # item is not there, the list moved up (an activity was deleted), the item that slid
        # over the boundary was never read, and the window is read again from the top. (A
        # list that moved down, a new upload, only repeats items: writes are idempotent.)
        start, boundary, rereads = 0, None, 0
        while True:
            overlap = 0 if boundary is None else 1
            asked = self._options.page_size + overlap
            params = {
                "start": start - overlap,
                "limit": asked,
                "startDate": since.date().isoformat(),
                "endDate": until.date().isoformat(),
            }
            page = self._garmin(functools.partial(api.get_json, ACTIVITIES_PATH, params))
            if not isinstance(page, list):
                raise Unavailable("Garmin answered something unreadable (activity list)")
            activities = self._parsed(page)
            self._store(api, user_sink, activities)
            if boundary is not None and all(a.activity_id != boundary for a in activities):
                rereads += 1
                if rereads > MAX_LIST_REREADS:
                    raise Unavailable("Garmin's activity list kept changing while it was read")
                start, boundary = 0, None
                continue
            if len(page) < asked:
                return
            start += len(page) - overlap
            if start >= MAX_LISTED_ACTIVITIES:
                # Counted in activities, not pages: at --page-size 1, 1,000 pages were 1,000
                # activities, and a user with more failed every run as a Garmin outage. This
                # is the user's failure: Garmin answered every page, so no outage is counted.
                self._control.garmin_answered()
                raise _Interrupted(
                    Outcome.FAILED,
                    f"Garmin's activity list did not end within {MAX_LISTED_ACTIVITIES} activities",
                )
            last = activities[-1] if activities else None
            # The boundary is the page's last item, if it is one the worker can read.
            boundary = last.activity_id if last is not None and last.summary is page[-1] else None

    def _parsed(self, page: list[Any]) -> list[Activity]:
        activities = []
        for raw in page:
            activity = parse_activity(raw)
            if activity is None:
                log.warning(
                    "user %s: skipped an activity without a usable id", self._leased.user_id
                )
            else:
                activities.append(activity)
        return activities

    def _store(self, api: LeasedApi, user_sink: UserSink, activities: list[Activity]) -> None:
        """One page: each missing original file (with --files), then every summary at once."""
        wrote_files: set[int] = set()
        for activity in activities if self._options.with_files else ():
            if user_sink.has_file(activity.activity_id):
                continue
            path = f"{DOWNLOAD_PREFIX}{activity.activity_id}"
            try:
                content = self._garmin(functools.partial(api.download, path))
            except FileTooLarge as exc:
                log.warning(
                    "user %s: activity %d's original file skipped (%s)",
                    self._leased.user_id,
                    activity.activity_id,
                    exc,
                )
                continue
            except NotFound:
                # An activity entered by hand has no original file: its summary is all there
                # is. (A later run asks again while the activity is in its window.)
                log.info(
                    "user %s: activity %d has no original file",
                    self._leased.user_id,
                    activity.activity_id,
                )
                continue
            self._checkpoint()
            if user_sink.write_file(activity.activity_id, content):
                wrote_files.add(activity.activity_id)
        if not activities:
            return
        self._checkpoint()
        wrote_summaries = user_sink.write_summaries(activities)
        for activity, wrote_summary in zip(activities, wrote_summaries, strict=True):
            if wrote_summary or activity.activity_id in wrote_files:
                self._items += 1
            # Stored now or already identical: either way it is safely in the sink.
            if activity.start_time is not None and (
                self._newest is None or activity.start_time > self._newest
            ):
                self._newest = activity.start_time

    def _checkpoint(self) -> None:
        """Before every write and Garmin call: is the lease ours, is the run still on?"""
        self._keeper.check()
        if self._control.interrupted:
            raise _Interrupted(Outcome.FAILED, "the run was stopped before this user finished")

    def _garmin_failed(self, exc: Unavailable) -> None:
        """Counted with the run's Garmin outages, unless Garmin's answer was about this
        session alone (a doubtful refusal of its garth exchange): such users in a row must
        not stop the run."""
        if not isinstance(exc, SessionInDoubt):
            self._control.garmin_unavailable(f"user {self._leased.user_id}: {exc}")

    def _garmin(self, call: Callable[[], T]) -> T:
        """One Garmin call, after the run's rate-limit pause (garmin_client retries it)."""
        self._checkpoint()
        waited = self._control.wait_for_garmin()
        # The pause may have been long: the lease and the run are checked again.
        self._checkpoint()
        if not waited:
            raise _Interrupted(Outcome.RATE_LIMITED, "Garmin's rate-limit pause outlasts the run")
        try:
            return call()
        except Unavailable:
            # The run's interruption cuts a call under way (ConnectApis): that is the stop,
            # not Garmin's being unavailable.
            self._checkpoint()
            raise

    # --- Update: report and release --------------------------------------------------------

    def _synced_through(self, outcome: Outcome) -> datetime | None:
        """Only a complete read moves it; never backwards, never past now."""
        if outcome not in (Outcome.SYNCED, Outcome.NOTHING_NEW):
            return None
        candidates = [t for t in (self._leased.synced_through, self._newest) if t is not None]
        if not candidates:
            # A first sync that read its whole window and found nothing: synced through the
            # window's start, at least. Reporting it counts the sync as one (last_synced_at,
            # the order of the due), where None would count a failed attempt and keep the
            # user first in line forever; and the next run still reads the whole window, so
            # a device that uploads late is not missed.
            return self._window_start()
        # A complete read covers the window, however old its newest item (a start time
        # before 1970, which the service refuses, from a device clock never set).
        return min(max(*candidates, self._window_start()), self._now())

    def _update(self, outcome: Outcome, detail: str) -> tuple[Outcome, str, bool]:
        """Report what must be reported; True when the lease is still to be released."""
        lease_id = self._leased.lease_id
        if outcome is Outcome.LEASE_LOST or self._ended_by_service:
            # Not ours any more (or ended by the service with the session): no report, no
            # release.
            return outcome, detail, False
        if outcome is Outcome.AUTH_EXPIRED:
            # Garmin definitely rejected the session: the service wipes it and ends the lease.
            try:
                # With the version of the token refused: if the service refreshed the
                # session since, the refusal says nothing of it, and the service keeps it.
                self._client.report_invalidated(lease_id, detail, self._session_version)
            except AuthServiceError as exc:
                if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                    # The service refreshed the session since that token: the refusal says
                    # nothing of it. The lease is still ours: given back, not held to its ttl.
                    return Outcome.FAILED, f"ReportInvalidated refused: {exc.message}", True
                # Any other failure did not end the lease either (INTERNAL, say): give it
                # back rather than lock the user until the ttl. Not when it is lost, nor
                # when the service cannot be reached or refuses us (the run is ending).
                release = not (exc.lease_lost or exc.fatal)
                return *rpc_failed(exc, "ReportInvalidated", self._control), release
            return outcome, detail, False
        return outcome, detail, True
