"""Lease renewal while one user's sync runs (on the run's renewal timer, sync_worker.renewals).

The keeper renews every ``fraction`` of the ttl (1/3 by default: two renewals may fail before
the lease lapses). It also keeps a local, conservative estimate of the lease's expiry
(measured from before the grant or renewal call was sent, on the monotonic clock), so the
sync stops writing before the service could hand the user to someone else even when renewals
fail without an answer.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sync_worker.client import AuthClient
from sync_worker.client_errors import AuthServiceError
from sync_worker.control import RunControl
from sync_worker.renewals import Renewals

log = logging.getLogger(__name__)

DEFAULT_RENEW_FRACTION = 1 / 3
# Stop writing this long before the estimated expiry (at most a tenth of the ttl).
MAX_SAFETY_MARGIN = 2.0


class LeaseGone(Exception):
    """The lease is lost (LEASE_LOST) or about to lapse unrenewed: stop writing now."""


class LeaseKeeper:
    def __init__(
        self,
        client: AuthClient,
        lease_id: str,
        ttl: timedelta,
        leased_at: float,
        control: RunControl,
        renewals: Renewals,
        *,
        fraction: float = DEFAULT_RENEW_FRACTION,
    ) -> None:
        self._client = client
        self._lease_id = lease_id
        self._ttl = ttl
        self._control = control
        self._renewals = renewals
        self._interval = ttl.total_seconds() * fraction
        self._margin = min(MAX_SAFETY_MARGIN, ttl.total_seconds() / 10)
        # Guards the expiry estimate and the renewal's schedule.
        self._state = threading.Condition()
        self._expires = leased_at + ttl.total_seconds()
        self._lost = threading.Event()
        self._entry: int | None = None  # the next renewal, once scheduled
        self._renewing = False
        self._stopped = False

    def start(self) -> None:
        with self._state:
            self._schedule()

    def stop(self) -> None:
        """Stop renewing (before the lease is released or reported); returns once no renewal
        is in flight, so none can reach the service after the release."""
        with self._state:
            self._stopped = True
            if self._entry is not None:
                self._renewals.cancel(self._entry)
                self._entry = None
            while self._renewing:
                self._state.wait()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise LeaseGone unless the lease is surely still ours."""
        if self._lost.is_set():
            raise LeaseGone("the service answered LEASE_LOST")
        with self._state:
            expires = self._expires
        if time.monotonic() >= expires - self._margin:
            raise LeaseGone("the lease could not be renewed before it expired")

    def _schedule(self) -> None:
        """(Holding the state.) The next renewal, an interval from now."""
        self._entry = self._renewals.at(time.monotonic() + self._interval, self._renew)

    def _renew(self) -> None:
        """On the run's renewal pool, when due."""
        with self._state:
            if self._stopped:
                return
            self._entry = None
            self._renewing = True
        again = False
        try:
            again = self._renew_once()
        # A bug must not pass silently on a pool thread; the expiry estimate guards the writes.
        except Exception:
            log.exception("lease renewal failed unexpectedly; no more renewals for this lease")
        finally:
            with self._state:
                self._renewing = False
                if again and not self._stopped:
                    self._schedule()
                self._state.notify_all()

    def _renew_once(self) -> bool:
        """One RenewLease; whether to go on renewing."""
        sent_at = time.monotonic()
        try:
            self._client.renew_lease(self._lease_id, self._ttl)
        except AuthServiceError as exc:
            if exc.lease_lost:
                log.warning("lease lost while syncing; stopping this user's writes")
                self._lost.set()
                return False
            if exc.fatal:
                self._control.fail(exc)
                return False
            # Anything else may pass; the local expiry estimate guards the writes.
            log.warning("lease renewal failed (%s); will retry", exc.code.name)
            return True
        with self._state:
            self._expires = sent_at + self._ttl.total_seconds()
        return True
