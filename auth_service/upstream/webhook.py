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
this POST's deadline. Name resolution is not covered (the resolver's own timeouts bound it);
the connect is, as the timer cannot reach a socket still connecting: each address the name
resolves to is tried for the connect timeout or the time left, whichever is shorter, and none
after the deadline (urllib3 gives each a whole connect timeout: a load balancer's name with six
unreachable addresses held a POST for six timeouts). A socket registered after the deadline is
shut down at once.

Credentials in the URL (`https://user:password@host/...`) go as HTTP Basic, set here:
upstream_session()'s guard against a netrc file also stops requests from sending them.

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
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import Timeout

from auth_service.domain.change_ports import WebhookUndelivered
from garmin_client.http_session import upstream_session

if TYPE_CHECKING:  # urllib3 names these types only for type checkers
    from urllib3._base_connection import BaseHTTPConnection
    from urllib3.util.connection import _TYPE_SOCKET_OPTIONS
    from urllib3.util.timeout import _TYPE_TIMEOUT

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
        self._url, self._auth = _without_credentials(url)
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
                    auth=self._auth,  # None: the session's no-op auth (no netrc)
                    timeout=(self._timeout, self._timeout),
                    allow_redirects=False,
                    stream=True,  # returns after the headers: _finish reads the body
                )
            # Only the type: a message could echo the URL. ValueError: a host name the resolver
            # cannot encode (an empty or over-long label) fails outside requests' exceptions.
            except (requests.RequestException, ValueError) as exc:
                if deadline.expired:
                    raise WebhookUndelivered(f"no answer within {self._deadline:g} s") from None
                raise WebhookUndelivered(f"no answer: {type(exc).__name__}") from None
            _finish(response)
        if not 200 <= response.status_code < 300:  # noqa: PLR2004 - the 2xx range
            raise WebhookUndelivered(f"HTTP {response.status_code}")


def _without_credentials(url: str) -> tuple[str, HTTPBasicAuth | None]:
    """The URL to request, without its userinfo, and HTTP Basic from that userinfo, if any.

    Percent-decoded to bytes (as RFC 3986 writes them), so any password goes as its octets;
    requests would take text as Latin-1 and fail every POST on other characters."""
    parts = urlsplit(url)
    if parts.username is None:  # no "@" before the host
        return url, None
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if not parts.username and not parts.password:
        return bare, None
    user = unquote_to_bytes(parts.username)
    return bare, HTTPBasicAuth(user, unquote_to_bytes(parts.password or ""))


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
        self._seconds = seconds
        self._ends_at = 0.0  # on time.monotonic(), set when the timer starts
        self._lock = threading.Lock()
        self._handles: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _PostDeadline:
        _current.deadline = self
        self._ends_at = time.monotonic() + self._seconds
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

    def seconds_left(self) -> float:
        """What a connect attempt may still take (the timer cannot cut one short)."""
        return self._ends_at - time.monotonic()

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


def _current_deadline() -> _PostDeadline | None:
    return getattr(_current, "deadline", None)


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
    connect timeout or the time left before this POST's deadline, whichever is shorter, and
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
    """One address's connect timeout: the POST's, shortened to the time left before its
    deadline (TimeoutError when none is left)."""
    bound = Timeout.resolve_default_timeout(connect_timeout)  # None: no bound of its own
    deadline = _current_deadline()
    if deadline is None:
        return bound
    left = deadline.seconds_left()
    if left <= 0:
        raise TimeoutError("the POST's deadline passed")
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
