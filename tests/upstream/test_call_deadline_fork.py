"""The shared call-deadline watchdog (garmin_client.call_deadline._Watchdog) after a fork.
As first written (b9fbefb) a forked child simply started a watchdog of its own ("a fork
copies no thread"); two things a fork does copy broke that (found by review):

* the watchdog's lock (`_wake`), held by the parent's watchdog thread whenever it is awake (a
  call just started, or it is scanning): the child's first call under a deadline then blocks
  for ever in `_WATCHDOG.add`, before any timeout of its own could apply;
* the registrations of the parent's calls under way at the fork, each with a dup()ed
  descriptor of that call's socket: the child's watchdog expires them at their deadlines and
  shuts those sockets down (shutdown acts on the socket both processes share), cutting
  whatever the parent's kept-alive connection serves by then.

With a Timer per call (before b9fbefb) neither could happen. Now the child gets a fresh
watchdog (os.register_at_fork) and closes its copies of the parent's descriptors. The child
here is bounded by SIGALRM, so a hang shows as a failure, not as a stuck test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time

import pytest

from garmin_client.call_deadline import CallDeadline

pytestmark = pytest.mark.timeout(60)

FORKS = 30
LIVE_CALLS = 50_000
CHILD_BOUND_SECONDS = 2


def _child(body) -> None:  # type: ignore[no-untyped-def]
    """Runs in the forked child; never returns (SIGALRM's default action ends a hang)."""
    # SIGALRM's default action (pytest-timeout's handler would turn a hang into an exit).
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(CHILD_BOUND_SECONDS)
    try:
        body()
    finally:
        os._exit(0)


def test_a_forked_child_can_make_a_call_under_a_deadline() -> None:
    """A parent with calls under way (cancellable, as the worker's are) forks; the child's
    first call must not wait for a lock the fork copied held. The parent's watchdog holds it
    while it looks over the calls (every 0.2 s while one may be cancelled); many live calls
    only make that look longer, so that the fork catches it holding the lock more often (it
    also happens, rarely, with a single call: 1 in about 1,000 forks here)."""
    cancel = threading.Event()
    with contextlib.ExitStack() as calls:
        for _ in range(LIVE_CALLS):
            calls.enter_context(CallDeadline(120.0, cancel))
        for attempt in range(1, FORKS + 1):
            time.sleep(0.05)
            pid = os.fork()
            if pid == 0:
                _child(lambda: CallDeadline(1.0).__enter__())
            _, status = os.waitpid(pid, 0)
            assert not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM), (
                f"fork {attempt}: the child hung for ever entering its first CallDeadline "
                "(_WATCHDOG._wake was copied held by the parent's watchdog thread)"
            )


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def test_a_forked_child_does_not_cut_the_parents_kept_alive_connection() -> None:
    deadline_seconds = 1.0
    client, server = _connected_pair()
    in_call, call_over = threading.Event(), threading.Event()

    def parent_call() -> None:
        # A call of the parent's on `client` (as urllib3's _new_conn/_get_conn register it).
        with CallDeadline(deadline_seconds) as deadline:
            deadline.watch(client)
            in_call.set()
            call_over.wait()

    caller = threading.Thread(target=parent_call)
    caller.start()
    assert in_call.wait(5)
    time.sleep(0.3)  # the parent's watchdog is asleep again: the child's lock is free
    pid = os.fork()
    if pid == 0:  # the child: one call of its own, outliving the parent's call's deadline

        def body() -> None:
            with CallDeadline(10.0):
                time.sleep(deadline_seconds + 1.0)

        _child(body)
    try:
        call_over.set()  # the parent's call ends long before its deadline
        caller.join()
        # The connection stays open for the parent's next call (urllib3's pool keeps it).
        time.sleep(deadline_seconds + 1.5)
        server.sendall(b"HTTP/1.1 200 OK\r\n")
        client.settimeout(2)
        try:
            got = client.recv(64)
        except ConnectionResetError:
            got = b"<connection reset>"
        assert got == b"HTTP/1.1 200 OK\r\n", (
            "a forked child's watchdog shut down the parent's socket at the deadline of a "
            f"call the parent had finished (read {got!r})"
        )
    finally:
        os.waitpid(pid, 0)
        client.close()
        server.close()
