"""When each of a run's leases is next renewed: one timer thread for the whole run.

A user's sync usually ends long before its first renewal is due (tens of milliseconds against
a third of the ttl), so a thread per lease cost a thread start and a join per user for
renewals that almost never happen (benchmarks.sync_throughput --profile: 13% of the sync
threads' CPU). One thread keeps the due times instead; the renewal calls themselves run on a
small pool started when the first one is due, so a slow RenewLease (up to its deadline) never
delays another lease's renewal.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

# Drop entries of leases that ended once they outnumber the live ones by this much.
_COMPACT_SLACK = 64


class Renewals:
    """The due times of the run's leases; each due one is called back on the renewal pool."""

    def __init__(self, max_parallel: int) -> None:
        self._max_parallel = max_parallel
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def at(self, when: float, renew: Callable[[], None]) -> int:
        """Call `renew` on the renewal pool at monotonic time `when`; returns the entry's id
        (for `cancel`)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the run's renewals are closed")
            entry = next(self._ids)
            heapq.heappush(self._due, (when, entry, renew))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="lease-renewals", daemon=True
                )
                self._thread.start()
            elif self._due[0][1] == entry:
                self._cond.notify()  # sooner than what the thread waits for
            return entry

    def cancel(self, entry: int) -> None:
        """The entry will not be called (unless it already was)."""
        with self._cond:
            self._cancelled.add(entry)
            if len(self._cancelled) > len(self._due) // 2 + _COMPACT_SLACK:
                self._due = [due for due in self._due if due[1] not in self._cancelled]
                heapq.heapify(self._due)
                self._cancelled.clear()

    def close(self) -> None:
        """Stop the timer and wait for renewals in flight (the run is over)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _loop(self) -> None:
        while True:
            with self._cond:
                renew = self._next_due()
                if renew is None:
                    return
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        max_workers=self._max_parallel, thread_name_prefix="lease-renewal"
                    )
                pool = self._pool
            pool.submit(renew)

    def _next_due(self) -> Callable[[], None] | None:
        """Wait (holding the condition) for the next entry that is due; None once closed."""
        while not self._closed:
            if not self._due:
                self._cond.wait()
                continue
            when, entry, renew = self._due[0]
            if entry in self._cancelled:
                heapq.heappop(self._due)
                self._cancelled.discard(entry)
                continue
            wait = when - time.monotonic()
            if wait > 0:
                self._cond.wait(wait)
                continue
            heapq.heappop(self._due)
            return renew
        return None
