"""The webhook receiver over HTTP: implements auth_service.domain.change_ports.WebhookSender.

Not Garmin, but the other party the service calls over HTTP, so it lives with the upstream
adapters. One POST per call, no retry here: auth_service.services.webhooks retries with
backoff from the durable cursor, and urllib3's own retries are off, as in garmin_client's
transport, so one layer decides when to repeat.

Only the answer's status matters. Its body is read, and dropped, up to ANSWER_BODY_BOUND: one
that ends within it leaves the connection open for the next POST (each change is one POST, and
a new TCP and TLS handshake for each would throttle delivery to a remote receiver); a longer
one (a receiver, or a proxy in front of it, could send one for ever, or gigabytes) costs the
connection, never more memory. And each POST ends by a deadline as a whole (twice the timeout:
connect, then the answer), not only per read as requests' timeouts do: one byte now and then
of the status line, headers or body (or of a proxy's answer to CONNECT) would otherwise hold
it for ever. The cursor's claim (4 x timeout + 10 s) outlasts that deadline, so no other
replica posts meanwhile, and a stopping replica's last POST ends within its grace.

How: a timer shuts the POST's socket down at the deadline, which ends whatever the POST is
blocked in with an error. A socket serves a POST either newly opened (urllib3's connection's
_new_conn, before any TLS handshake or proxy tunnel) or kept alive from an earlier POST (its
pool's _get_conn); both run on the thread sending the POST, which registers it there with
this POST's deadline. Name resolution is not covered (the resolver's own timeouts bound it),
and each address tried is bounded by the connect timeout; a socket registered after the
deadline is shut down at once.

Signature (Stripe's scheme): `X-Garmin-Auth-Signature: t=<unix seconds>,v1=<hex>` where hex is
HMAC-SHA256 over `<t>.<body>` with the shared secret. Receivers recompute it, compare in
constant time and refuse old `t` (replays).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection

from auth_service.domain.change_ports import WebhookUndelivered
from garmin_client.http_session import upstream_session

if TYPE_CHECKING:  # urllib3 names the type of its pool's connections only for type checkers
    from urllib3._base_connection import BaseHTTPConnection

SIGNATURE_HEADER = "X-Garmin-Auth-Signature"
USER_AGENT = "garmin-auth-webhooks/1"

# How much of an answer's body is read (and dropped) to keep its connection for the next POST:
# an acknowledgement is a few bytes, or a short error page; past this, closing the connection
# is cheaper than downloading whatever the receiver sends.
ANSWER_BODY_BOUND = 64 * 1024
_READ_CHUNK = 16 * 1024


def post_deadline_seconds(timeout_seconds: float) -> float:
    """When a POST ends at the latest: a connect and an answer timeout (WebhookSettings'
    claim_seconds outlasts twice this)."""
    return 2 * timeout_seconds


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The header's value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class HttpWebhookSender:
    """POSTs signed JSON bodies to one URL."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        timeout_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._secret = secret
        self._timeout = timeout_seconds
        self._deadline = post_deadline_seconds(timeout_seconds)
        self._clock = clock
        self._http = upstream_session()
        adapter = _DeadlineAdapter(max_retries=0)
        self._http.mount("https://", adapter)
        self._http.mount("http://", adapter)

    def __repr__(self) -> str:
        return f"HttpWebhookSender(url={self._url!r}, secret=<redacted>)"

    def send(self, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",  # the body is dropped: no need to inflate it
            SIGNATURE_HEADER: signature(self._secret, int(self._clock()), body),
        }
        with _PostDeadline(self._deadline) as deadline:
            try:
                response = self._http.post(
                    self._url,
                    data=body,
                    headers=headers,
                    timeout=(self._timeout, self._timeout),
                    allow_redirects=False,
                    stream=True,  # returns after the headers: _finish reads the body
                )
            # Only the type: a message could echo the URL's credentials, if it holds any.
            except requests.RequestException as exc:
                if deadline.expired:
                    raise WebhookUndelivered(f"no answer within {self._deadline:g} s") from None
                raise WebhookUndelivered(f"no answer: {type(exc).__name__}") from None
            _finish(response)
        if not 200 <= response.status_code < 300:  # noqa: PLR2004 - the 2xx range
            raise WebhookUndelivered(f"HTTP {response.status_code}")


def _finish(response: requests.Response) -> None:
    """Reads the answer's body a chunk at a time, dropping each, until it ends or passes
    ANSWER_BODY_BOUND. Then close() puts the connection back in the pool if the body ended
    (requests marked it consumed), and closes it otherwise: past the bound, or cut by the
    deadline or the receiver."""
    read = 0
    with contextlib.suppress(requests.RequestException):  # the status stands all the same
        for chunk in response.iter_content(_READ_CHUNK):
            read += len(chunk)
            if read > ANSWER_BODY_BOUND:
                break
    response.close()


# The _PostDeadline of the POST this thread is sending (urllib3 takes its sockets on it).
_current = threading.local()


class _PostDeadline:
    """The sockets one POST uses, shut down when its deadline passes."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._handles: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _PostDeadline:
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        _current.deadline = None
        with self._lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()

    def watch(self, sock: Any) -> None:
        # A descriptor of our own on the same socket, closed when the POST ends: urllib3 may
        # close its own (and the number go to another socket) while the timer fires; ours is
        # shut down and closed under our lock only. A socket kept alive gets a new one for
        # each POST it serves. By its descriptor alone: through an HTTPS proxy to an https://
        # receiver, urllib3's socket is a TLS-in-TLS transport with no family or type, whose
        # descriptor is the connection's.
        try:
            handle = socket.socket(fileno=os.dup(sock.fileno()))
        except (OSError, ValueError):
            return  # already closed: nothing to wait for on it
        with self._lock:
            self._handles.append(handle)
            if self.expired:
                _shut_down(handle)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for handle in self._handles:
                _shut_down(handle)


def _shut_down(handle: socket.socket) -> None:
    # Wakes a read or handshake blocked on the socket (it sees the end of the stream).
    with contextlib.suppress(OSError):  # already reset by the receiver
        handle.shutdown(socket.SHUT_RDWR)


def _watched(sock: socket.socket) -> socket.socket:
    deadline: _PostDeadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)
    return sock


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _watched(super()._new_conn())


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _watched(super()._new_conn())


def _kept_alive(conn: BaseHTTPConnection) -> BaseHTTPConnection:
    # A connection from the pool still has the socket of an earlier POST. A new one has none
    # yet (_new_conn registers it), nor has one that urllib3 just found dropped: closed by the
    # receiver, or shut down by an earlier POST's deadline just as its body ended.
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


_WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedHTTPPool,
    "https": _WatchedHTTPSPool,
}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections (direct or through an HTTP proxy) show their
    sockets to the POST's deadline. A SOCKS proxy keeps its own: there, only the per-read
    timeouts apply."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager
