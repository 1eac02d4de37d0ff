"""A deadline for a whole HTTP call through requests, not only per read as requests' timeouts
are: one byte now and then of a status line, headers or body (or of a proxy's answer to
CONNECT) would otherwise hold a call for ever. Shared by every client whose callers size
something on the call's worst case: the transport to Garmin (a refresh claim outlives one
call) and the webhook sender (a cursor claim outlives one POST).

A caller may also end a call early (`cancel`, an event it sets: the worker's stop request),
as if its deadline had passed. `within` runs a call under one, for clients that read the
answer's body themselves (the Connect API client, on either of its paths).

How: a timer (one watchdog thread for every call) shuts the call's sockets down at the deadline,
which ends whatever the call is blocked in with an error. A socket serves a call either newly
opened (urllib3's connection's _new_conn, before any TLS handshake or proxy tunnel) or kept
alive from an earlier call (its pool's _get_conn); both run on the thread making the call, which
registers it there with the call's deadline. Name resolution is not covered (the resolver's own
timeouts bound it); the connect is, as the timer cannot reach a socket still connecting: each
address the name resolves to is tried for the connect timeout or the time left, whichever is
shorter, and none after the deadline (urllib3 gives each a whole connect timeout: a name with
six unreachable addresses held a call for six timeouts). A socket registered after the deadline
is shut down at once. A SOCKS proxy keeps its own sockets: there, only the per-read timeouts
apply.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import Timeout

if TYPE_CHECKING:  # urllib3 names these types only for type checkers
    from urllib3._base_connection import BaseHTTPConnection
    from urllib3.util.connection import _TYPE_SOCKET_OPTIONS
    from urllib3.util.timeout import _TYPE_TIMEOUT


# The CallDeadline of the call this thread is making (urllib3 takes its sockets on it).
_current = threading.local()
# How often a call that may be cancelled looks whether it was (the event is set from a
# signal handler, which must not take a lock a call's thread may hold: so it is polled).
_CANCEL_POLL_SECONDS: Final = 0.2

T = TypeVar("T")


class CallDeadline:
    """The sockets one call uses, shut down when its deadline passes or `cancel` is set
    (`with`: the call)."""

    def __init__(self, seconds: float, cancel: threading.Event | None = None) -> None:
        self.expired = False
        self._seconds = seconds
        self._cancel = cancel
        self._ends_at = 0.0  # on time.monotonic(), set when the call starts
        self._lock = threading.Lock()
        self._handles: list[socket.socket] = []

    def __enter__(self) -> CallDeadline:
        _current.deadline = self
        self._ends_at = time.monotonic() + self._seconds
        _WATCHDOG.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _WATCHDOG.remove(self)
        _current.deadline = None
        with self._lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()

    def seconds_left(self) -> float:
        """What a connect attempt may still take (the timer cannot cut one short)."""
        return self._ends_at - time.monotonic()

    def watch(self, sock: Any) -> None:
        # A descriptor of our own on the same socket, closed when the call ends: urllib3 may
        # close its own (and the number go to another socket) while the timer fires; ours is
        # shut down and closed under our lock only. A socket kept alive gets a new one for
        # each call it serves. By its descriptor alone: through an HTTPS proxy to an https://
        # server, urllib3's socket is a TLS-in-TLS transport with no family or type, whose
        # descriptor is the connection's.
        try:
            handle = socket.socket(fileno=os.dup(sock.fileno()))
        except (OSError, ValueError):
            return  # already closed: nothing to wait for on it
        with self._lock:
            self._handles.append(handle)
            if self.expired:
                _shut_down(handle)

    def _due(self, now: float) -> bool:
        return now >= self._ends_at or (self._cancel is not None and self._cancel.is_set())

    def _next_look(self, now: float) -> float:
        """Seconds until the watchdog must look at this call again."""
        left = self._ends_at - now
        return left if self._cancel is None else min(left, _CANCEL_POLL_SECONDS)

    def _expire(self) -> None:
        # No further connect either (a cancelled call may have time left).
        self._ends_at = min(self._ends_at, time.monotonic())
        with self._lock:
            self.expired = True
            for handle in self._handles:
                _shut_down(handle)


class _Watchdog:
    """One thread for every call under a deadline in this process, started with the first:
    a thread per call would cost each call (the worker makes one per Garmin GET) a thread's
    start, for a timer that almost never fires."""

    def __init__(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._live: set[CallDeadline] = set()
        self._thread: threading.Thread | None = None

    def forget_in_child(self) -> None:
        """After a fork, in the child: a fresh watchdog. The fork copied the parent's lock
        (held, if its watchdog was awake: the child's first call would wait for ever) and the
        parent's calls under way, each with a descriptor of its socket, which the socket
        both processes share: expired here, their shutdown would cut the parent's
        connection. The child closes its copies of those descriptors, and no more."""
        for deadline in self._live:
            for handle in deadline._handles:  # no lock: its holder may be a parent thread
                with contextlib.suppress(OSError):
                    handle.close()
        self._wake = threading.Condition(threading.Lock())
        self._live = set()
        self._thread = None

    def add(self, deadline: CallDeadline) -> None:
        with self._wake:
            self._live.add(deadline)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="call-deadlines", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def remove(self, deadline: CallDeadline) -> None:
        with self._wake:
            self._live.discard(deadline)

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [deadline for deadline in self._live if deadline._due(now)]
                self._live.difference_update(due)
                if not due:
                    looks = [deadline._next_look(now) for deadline in self._live]
                    # Nothing live: asleep until the next call starts.
                    self._wake.wait(min(looks) if looks else None)
                    continue
            # Outside the watchdog's lock: each call's own lock is taken here, and a call
            # holding it never waits for the watchdog's.
            for deadline in due:
                deadline._expire()


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.forget_in_child)


def _shut_down(handle: socket.socket) -> None:
    # Wakes a read or handshake blocked on the socket (it sees the end of the stream).
    with contextlib.suppress(OSError):  # already reset by the peer
        handle.shutdown(socket.SHUT_RDWR)


def _current_deadline() -> CallDeadline | None:
    return getattr(_current, "deadline", None)


def call_expired() -> bool:
    """Whether the call this thread is making has passed its deadline (or was cancelled):
    garmin_client.retry repeats nothing then."""
    deadline = _current_deadline()
    return deadline is not None and deadline.expired


def within(
    seconds: float | None,
    cancel: threading.Event | None,
    call: Callable[[], T],
    timed_out: Callable[[], Exception],
) -> T:
    """`call()` (sending a request and reading its answer whole) under a CallDeadline of
    `seconds` that `cancel` may end early; None: `call()` as it is. Once the deadline passed,
    whatever `call()` raised or returned, `timed_out()` is raised instead: a body whose end
    is the connection's close reads as whole when cut short."""
    if seconds is None:
        return call()
    with CallDeadline(seconds, cancel) as deadline:
        try:
            answer = call()
        except Exception:
            if deadline.expired:
                raise timed_out() from None
            raise
        if deadline.expired:
            raise timed_out()
        return answer


def _watched(sock: socket.socket) -> socket.socket:
    deadline = _current_deadline()
    if deadline is not None:
        deadline.watch(sock)
    return sock


def _connect_by_deadline(
    host: str,
    port: int,
    connect_timeout: _TYPE_TIMEOUT,
    source_address: tuple[str, int] | None,
    socket_options: _TYPE_SOCKET_OPTIONS | None,
) -> socket.socket:
    """urllib3's create_connection, but each address `host` resolves to is tried for the
    connect timeout or the time left before this call's deadline, whichever is shorter, and
    none after it (TimeoutError)."""
    error = OSError("getaddrinfo returns an empty list")
    resolved = socket.getaddrinfo(host.strip("[]"), port, allowed_gai_family(), socket.SOCK_STREAM)
    for family, kind, protocol, _, address in resolved:
        timeout = _attempt_timeout(connect_timeout)
        sock = socket.socket(family, kind, protocol)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
        else:
            return sock
    raise error


def _attempt_timeout(connect_timeout: _TYPE_TIMEOUT) -> float | None:
    """One address's connect timeout: the call's, shortened to the time left before its
    deadline (TimeoutError when none is left)."""
    bound = Timeout.resolve_default_timeout(connect_timeout)  # None: no bound of its own
    deadline = _current_deadline()
    if deadline is None:
        return bound
    left = deadline.seconds_left()
    if left <= 0:
        raise TimeoutError("the call's deadline passed")
    return left if bound is None else min(bound, left)


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        # urllib3's _new_conn, with the same errors for the same failures, but connecting
        # through _connect_by_deadline instead of urllib3's create_connection.
        try:
            sock = _connect_by_deadline(
                self._dns_host, self.port, self.timeout, self.source_address, self.socket_options
            )
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            message = f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            raise ConnectTimeoutError(self, message) from exc
        except OSError as exc:
            message = f"Failed to establish a new connection: {exc}"
            raise NewConnectionError(self, message) from exc
        return _watched(sock)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """The same _new_conn (the TLS handshake follows it, on the watched socket)."""


def _kept_alive(conn: BaseHTTPConnection) -> BaseHTTPConnection:
    # A connection from the pool still has the socket of an earlier call. A new one has none
    # yet (_new_conn registers it), nor has one that urllib3 just found dropped: closed by the
    # peer, or shut down by an earlier call's deadline just as its body ended.
    sock = getattr(conn, "sock", None)
    if sock is not None:
        _watched(sock)
    return conn


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection

    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        return _kept_alive(super()._get_conn(timeout))


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection

    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        return _kept_alive(super()._get_conn(timeout))


# urllib3's pool classes whose connections show their sockets to the thread's CallDeadline
# (garmin_client.api_http mounts them on its PoolManager).
WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedHTTPPool,
    "https": _WatchedHTTPSPool,
}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections (direct or through an HTTP proxy) show their
    sockets to the deadline of the call (CallDeadline) the sending thread is in, if any."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager
