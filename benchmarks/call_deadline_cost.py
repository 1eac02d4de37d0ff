"""What a whole-call deadline costs a Garmin call: garmin_client.call_deadline's one watchdog
thread per process, against a timer thread started per call (what the service's calls used
before 7 Dec, and the worker's bound as first written), measured side by side in one run.

    .venv/bin/python -m benchmarks.call_deadline_cost [--calls 50000] [--rounds 2]

Each call runs under `within(300 s, cancel)` and registers one socket, as a connection's use
does (a dup'd descriptor, closed when the call ends); the call itself does nothing else, so
the figure is the deadline's own CPU, the watchdog's or timer's wake-ups included (getrusage
of the whole process). The worker makes one such call per synced user's list page (and per
download with --with-files), against ~2.7 ms of worker CPU per synced user.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from types import TracebackType

from benchmarks.harness import Report, ratio, run_reported
from garmin_client.call_deadline import CallDeadline, _current_deadline, within

WARM_UP = 2000


class _TimerPerCall:
    """The design replaced: a thread started per call, polling its cancel event."""

    def __init__(self, seconds: float, cancel: threading.Event) -> None:
        self._seconds, self._cancel = seconds, cancel
        self._finished = threading.Event()
        self._handles: list[socket.socket] = []
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _TimerPerCall:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._finished.set()
        for handle in self._handles:
            handle.close()

    def watch(self, sock: socket.socket) -> None:
        self._handles.append(sock.dup())

    def _watch(self) -> None:
        waited = 0.0
        while not self._finished.wait(0.2) and waited < self._seconds:
            waited += 0.2
            if self._cancel.is_set():
                return


def _cpu_per_call(call: Callable[[], object], calls: int) -> float:
    """Microseconds of process CPU per call."""
    for _ in range(WARM_UP):
        call()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(calls):
        call()
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used / calls * 1e6


def run(args: argparse.Namespace, report: Report) -> None:
    mine, _peer = socket.socketpair()
    cancel = threading.Event()

    def registers() -> int:
        deadline = _current()
        deadline.watch(mine)
        return 1

    def watchdog() -> int:
        return within(300.0, cancel, registers, TimeoutError)

    def timer_per_call() -> None:
        with _TimerPerCall(300.0, cancel) as timer:
            timer.watch(mine)

    for round_number in range(1, args.rounds + 1):
        shared = _cpu_per_call(watchdog, args.calls)
        per_call = _cpu_per_call(timer_per_call, args.calls)
        report.figure(f"call_deadline_watchdog_us_round{round_number}", shared, "us")
        report.figure(f"call_deadline_thread_per_call_us_round{round_number}", per_call, "us")
        report.figure(
            f"call_deadline_watchdog_vs_thread_round{round_number}",
            ratio(shared, per_call),
            "ratio",
        )


def _current() -> CallDeadline:
    deadline = _current_deadline()
    assert deadline is not None
    return deadline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.call_deadline_cost")
    parser.add_argument("--calls", type=int, default=50_000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="side-by-side rounds")
    return run_reported(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
