"""Human progress on stderr: a one-line bar on a terminal, periodic log lines otherwise
(a CronJob's log). Machine output (one JSON line per user) goes to stdout, not here."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import TextIO

from sync_worker.sync import Outcome, UserResult

log = logging.getLogger("sync_worker.progress")

_BAR_WIDTH = 24


class Progress:
    def __init__(
        self, stream: TextIO, *, total: int | None, interval: float, is_tty: bool | None = None
    ) -> None:
        self._stream = stream
        self._total = total
        self._interval = interval
        self._tty = stream.isatty() if is_tty is None else is_tty
        self._lock = threading.Lock()
        self._counts: Counter[Outcome] = Counter()
        self._in_flight = 0
        self._started = time.monotonic()
        self._last_report = self._started

    def user_started(self) -> None:
        with self._lock:
            self._in_flight += 1
        self.tick()

    def user_finished(self, result: UserResult, *, was_running: bool = True) -> None:
        """``was_running`` is False for a user refused at lease time (never started)."""
        with self._lock:
            if was_running:
                self._in_flight -= 1
            self._counts[result.outcome] += 1
        if result.outcome in (Outcome.FAILED, Outcome.AUTH_EXPIRED):
            # Worth an operator's eye; the detail never holds a secret.
            log.warning("user %s: %s (%s)", result.user_id, result.outcome.value, result.detail)
        self.tick()

    def tick(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            due = force or self._tty or now - self._last_report >= self._interval
            if not due:
                return
            self._last_report = now
            line = self._line(now)
        if self._tty:
            self._stream.write("\r\x1b[2K" + line)
            self._stream.flush()
        else:
            log.info("progress: %s", line)

    def close(self) -> None:
        self.tick(force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _line(self, now: float) -> str:
        done = sum(self._counts.values())
        counts = ", ".join(f"{o.value} {n}" for o, n in sorted(self._counts.items()) if n)
        text = f"{done} users done, {self._in_flight} in flight, {now - self._started:.0f}s"
        if counts:
            text += f" ({counts})"
        if self._tty and self._total:
            filled = round(_BAR_WIDTH * done / self._total)
            text = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {done}/{self._total} " + text
        return text
