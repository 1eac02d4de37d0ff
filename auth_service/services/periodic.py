"""Background work that time causes: a task run every so often on a daemon thread.

Every replica runs its own (housekeeping, keep-alive); the tasks themselves make sure the
replicas do not repeat each other's work (Store.exclusive, refresh claims).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `task` every `interval_seconds` (spread by +/- `jitter`, a fraction, so replicas
    started together drift apart) on a daemon thread named `name`, until stopped."""

    def __init__(
        self,
        name: str,
        task: Callable[[], object],
        interval_seconds: float,
        *,
        jitter: float = 0.0,
    ) -> None:
        self._name = name
        self._task = task
        self._interval = interval_seconds
        self._jitter = jitter
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _next_wait(self) -> float:
        spread = self._interval * self._jitter
        # Not cryptographic: only spreads the passes of replicas over time.
        return self._interval + random.uniform(-spread, spread)  # noqa: S311

    def _loop(self) -> None:
        while not self._stopping.wait(self._next_wait()):
            try:
                self._task()
            # The database (or Garmin) may be down for a while; the next pass tries again.
            # Only the type is logged: driver messages can echo connection parameters.
            except Exception as exc:  # noqa: BLE001
                log.warning("%s pass failed (%s); retrying later", self._name, type(exc).__name__)
