"""Background lease renewal while one user's sync runs.

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
        *,
        fraction: float = DEFAULT_RENEW_FRACTION,
    ) -> None:
        self._client = client
        self._lease_id = lease_id
        self._ttl = ttl
        self._control = control
        self._interval = ttl.total_seconds() * fraction
        self._margin = min(MAX_SAFETY_MARGIN, ttl.total_seconds() / 10)
        self._lock = threading.Lock()
        self._expires = leased_at + ttl.total_seconds()
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._started = False

    def start(self) -> None:
        self._started = True
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (before the lease is released or reported)."""
        self._stopping.set()
        if self._started:
            self._thread.join()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise LeaseGone unless the lease is surely still ours."""
        if self._lost.is_set():
            raise LeaseGone("the service answered LEASE_LOST")
        with self._lock:
            expires = self._expires
        if time.monotonic() >= expires - self._margin:
            raise LeaseGone("the lease could not be renewed before it expired")

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval):
            sent_at = time.monotonic()
            try:
                self._client.renew_lease(self._lease_id, self._ttl)
            except AuthServiceError as exc:
                if exc.lease_lost:
                    log.warning("lease lost while syncing; stopping this user's writes")
                    self._lost.set()
                    return
                if exc.fatal:
                    self._control.fail(exc)
                    return
                # Anything else may pass; the local expiry estimate guards the writes.
                log.warning("lease renewal failed (%s); will retry", exc.code.name)
                continue
            with self._lock:
                self._expires = sent_at + self._ttl.total_seconds()
