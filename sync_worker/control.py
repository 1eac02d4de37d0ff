"""What every thread of a run shares: stop (SIGTERM), a fatal auth-service failure, the run's
deadline, the "slow down until" that a Garmin 429 imposes on every thread, and the count of
users in a row that Garmin's being unavailable failed.

A Garmin outage must not be multiplied by the run (issue 14): each user Garmin fails (5xx or
timeouts after garmin_client's bounded retries, or GARMIN_UNAVAILABLE from the service's own
refresh) pauses every thread's next Garmin call with exponential backoff, and after
``max_garmin_unavailable`` such users in a row the run stops leasing users, abandons the ones
in flight (their leases are released) and ends with its own exit code. A user Garmin served
resets the count."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sync_worker.client_errors import AuthServiceError

log = logging.getLogger(__name__)

# Garmin said 429 without a Retry-After: pause this long.
DEFAULT_RATE_LIMIT_PAUSE = 60.0
# The longest pause a Retry-After can impose (--rate-limit-max-wait): a garbled or hostile
# header (a year, an HTTP-date in 9999) must not park the run. The service's own cap
# (GARMIN_AUTH_RATE_LIMIT_MAX_WAIT) has the same default.
DEFAULT_MAX_RATE_LIMIT_PAUSE = 3600.0
# Users in a row that Garmin's being unavailable may fail before the run gives up.
DEFAULT_MAX_GARMIN_UNAVAILABLE = 3
# The pause after the first such user; it doubles with each next one, up to the cap.
DEFAULT_UNAVAILABLE_BACKOFF = 5.0
MAX_UNAVAILABLE_BACKOFF = 60.0
# Longest single wait, so a stop request is noticed promptly even if an event is missed.
_WAIT_SLICE = 0.5


class RunControl:
    """Thread-safe run state. ``interrupted`` means: stop taking users, abandon current ones."""

    def __init__(
        self,
        max_runtime: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_garmin_unavailable: int = DEFAULT_MAX_GARMIN_UNAVAILABLE,
        unavailable_backoff: float = DEFAULT_UNAVAILABLE_BACKOFF,
        max_rate_limit_pause: float = DEFAULT_MAX_RATE_LIMIT_PAUSE,
    ) -> None:
        self._clock = clock
        self._max_rate_limit_pause = max_rate_limit_pause
        self._max_unavailable = max_garmin_unavailable
        self._unavailable_backoff = unavailable_backoff
        self._unavailable_in_a_row = 0
        self._garmin_outage: str | None = None
        self._deadline = None if max_runtime is None else clock() + max_runtime
        self._lock = threading.Lock()
        self._interrupt = threading.Event()
        self._stop_requested = False
        self._crashed = False
        self._fatal: AuthServiceError | None = None
        self._settings_refused: AuthServiceError | None = None
        self._drain_failure: str | None = None
        self._pause_until = 0.0
        # The part of that pause Garmin's 429 asked for (an outage backoff is our own).
        self._rate_limited_until = 0.0

    # --- stop and fatal ------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM: may be called from a signal handler (no lock taken)."""
        self._stop_requested = True
        self._interrupt.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def thread_crashed(self) -> None:
        """A sync thread died of a bug: stop taking users; the run has failed (not SIGTERM)."""
        self._crashed = True
        self._interrupt.set()

    @property
    def crashed(self) -> bool:
        return self._crashed

    def fail(self, error: AuthServiceError) -> None:
        """The auth service is unreachable or refuses us: the run cannot go on."""
        with self._lock:
            if self._fatal is None:
                self._fatal = error
        self._interrupt.set()

    @property
    def fatal(self) -> AuthServiceError | None:
        with self._lock:
            return self._fatal

    def refuse_settings(self, error: AuthServiceError) -> None:
        """The service refused the run's own settings (INVALID_ARGUMENT on a call that names
        no user: a ttl above its maximum, say): no user can be synced; exit 2."""
        with self._lock:
            if self._settings_refused is None:
                self._settings_refused = error
        self._interrupt.set()

    @property
    def settings_refused(self) -> AuthServiceError | None:
        with self._lock:
            return self._settings_refused

    def drain_failed(self, why: str) -> None:
        """A --all thread gave up on LeaseNextSession after failures no other exit code
        names (an internal error of the service, a grant we cannot read, a token gRPC will
        not send): the run has failed, not found nothing due (exit 1). The other threads go
        on: each gives up by itself if the failure is the service's for everyone."""
        with self._lock:
            if self._drain_failure is None:
                self._drain_failure = why

    @property
    def drain_failure(self) -> str | None:
        """Why a --all thread gave up on LeaseNextSession; None when none did."""
        with self._lock:
            return self._drain_failure

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    @property
    def interruption(self) -> threading.Event:
        """Set once the run is interrupted: for Garmin calls to be cut by (never set it)."""
        return self._interrupt

    def past_deadline(self) -> bool:
        return self._deadline is not None and self._clock() >= self._deadline

    def may_take_users(self) -> bool:
        return not self.interrupted and not self.past_deadline()

    # --- Garmin outages ---------------------------------------------------------------------

    def garmin_unavailable(self, what: str) -> None:
        """Garmin's being unavailable failed a user: back off, or give up on the run."""
        with self._lock:
            self._unavailable_in_a_row += 1
            count = self._unavailable_in_a_row
            if count >= self._max_unavailable:
                if self._garmin_outage is None:
                    self._garmin_outage = (
                        f"Garmin was unavailable for {count} user(s) in a row (last: {what})"
                    )
                give_up = True
            else:
                give_up = False
                pause = min(MAX_UNAVAILABLE_BACKOFF, self._unavailable_backoff * 2 ** (count - 1))
                self._pause_until = max(self._pause_until, self._clock() + pause)
        if give_up:
            log.error("Garmin is unavailable (%s): the run stops taking users", what)
            self._interrupt.set()
        else:
            log.warning(
                "Garmin is unavailable (%s, %d in a row): pausing Garmin calls for %.1f s",
                what,
                count,
                pause,
            )

    def garmin_answered(self) -> None:
        """Garmin served a user: an outage, if there was one, is over."""
        with self._lock:
            self._unavailable_in_a_row = 0

    @property
    def garmin_outage(self) -> str | None:
        """Why the run gave up on Garmin; None when it did not."""
        with self._lock:
            return self._garmin_outage

    # --- pacing --------------------------------------------------------------------------

    def slow_down(self, retry_after: float | None) -> float:
        """Pause every thread's Garmin calls for Retry-After seconds (at most
        max_rate_limit_pause; none given, or none left, as a date already past on this
        machine's clock: DEFAULT_RATE_LIMIT_PAUSE, as the service holds back); returns the
        pause."""
        pause = DEFAULT_RATE_LIMIT_PAUSE if retry_after is None or retry_after <= 0 else retry_after
        pause = min(pause, self._max_rate_limit_pause)
        with self._lock:
            self._pause_until = max(self._pause_until, self._clock() + pause)
            self._rate_limited_until = max(self._rate_limited_until, self._clock() + pause)
        log.warning("Garmin is rate limiting: pausing Garmin calls for %.0f s", pause)
        return pause

    def pause_remaining(self) -> float:
        with self._lock:
            return max(0.0, self._pause_until - self._clock())

    def wait_for_garmin(self) -> bool:
        """Block while Garmin asked us to slow down. False when the run is interrupted or
        Garmin's 429 pause outlasts the deadline (the caller gives up instead of waiting).
        The backoff after an outage (at most a minute) is waited out even past the deadline:
        --max-runtime stops taking users, and the users in flight finish."""
        while True:
            if self.interrupted:
                return False
            with self._lock:
                pause_until, rate_limited_until = self._pause_until, self._rate_limited_until
            remaining = pause_until - self._clock()
            if remaining <= 0:
                return True
            if self._deadline is not None and rate_limited_until > self._deadline:
                return False
            self._interrupt.wait(min(remaining, _WAIT_SLICE))
