"""The HTTP side: one plain-HTTP port served from a background thread. It parses each
request, plays an injected fault or adds latency, asks the site for the answer and writes it.
Malformed requests get a JSON error too."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from garmin_emulator.endpoints import CONTROL_PREFIX
from garmin_emulator.faults import FAULT_HANG, FAULT_RESET, Fault
from garmin_emulator.wire import BadRequest, Incoming, Reply, error_reply

# Answers the emulator's own control paths (CONTROL_PREFIX): garmin_emulator.control.
Control = Callable[[Incoming], Reply]

log = logging.getLogger(__name__)

# Requests larger than this are refused: the emulator only ever needs small JSON/form bodies.
MAX_BODY_BYTES = 1024 * 1024


class Site(Protocol):
    """What the HTTP side asks of the emulator for each request."""

    @property
    def latency_seconds(self) -> float:
        """Added to every answer."""
        ...

    def arrived(self, path: str) -> None:
        """Record one request to `path`, in flight until `left` is called for it."""

    def left(self, path: str) -> None:
        """The request to `path` was answered, refused, reset or dropped."""

    def take_fault(self, path: str) -> Fault | None:
        """The injected fault this request plays, if any."""

    def route(self, request: Incoming) -> Reply:
        """The answer (raises BadRequest for a malformed request)."""
        ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], site: Site, control: Control) -> None:
        super().__init__(address, _Handler)
        self.site = site
        self.control = control
        # Set on stop: wakes handlers sleeping on latency, delays or hangs so they end promptly.
        self.stopping = threading.Event()
        # Open client connections (kept alive between requests, like Garmin's): closed on
        # stop, so a stopped emulator never answers on a connection a client kept.
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002
        """A client that drops a kept connection (a pool closing, a reset) is routine, not a
        traceback on stderr; anything else is logged with its traceback."""
        # socketserver calls this inside its except clause: the exception is the current one.
        failure = sys.exc_info()[1]
        if isinstance(failure, OSError):
            log.debug("emulator: a client connection ended abruptly")
            return
        log.error("emulator: request handling failed", exc_info=failure)

    def close_open_connections(self) -> None:
        with self._open_lock:
            open_now, self._open = self._open, set()
        for connection in open_now:
            with contextlib.suppress(OSError):  # already gone
                connection.shutdown(socket.SHUT_RDWR)

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            self.stopping.wait(seconds)


class HttpServer:
    """Serves a site, and the emulator's control paths, on host:port (0: a free port) until
    stopped."""

    def __init__(self, site: Site, control: Control, host: str, port: int) -> None:
        self._server = _Server((host, port), site, control)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="garmin-emulator",
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_open_connections()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server_version = "GarminEmulator/1"
    # Garmin speaks HTTP/1.1 and keeps connections open between requests: a client that reuses
    # its connection (the worker's Connect API clients do, user after user) pays no new
    # handshake per request here either. Every reply carries its Content-Length.
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without this, Nagle's algorithm holds the
    # body back until the client's delayed ACK of the headers (40 ms on Linux).
    disable_nagle_algorithm = True
    # A stuck client, or an idle kept connection, must not pin a thread forever.
    timeout = 30

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: ARG002 - the stdlib signature
        # Request lines carry SSO tickets and OAuth parameters in their query: log the method,
        # the path and the status only (a malformed request may have no path at all).
        path = urlsplit(getattr(self, "path", "") or "").path
        status = args[1] if len(args) > 1 else "-"
        log.debug("emulator: %s %s -> %s", getattr(self, "command", "?"), path, status)

    def send_error(
        self,
        code: int,
        message: str | None = None,
        explain: str | None = None,  # noqa: ARG002 (the stdlib's signature)
    ) -> None:
        """Malformed requests get a JSON error too (the stdlib would send HTML)."""
        if self.request_version == "HTTP/0.9":
            # An unparsable request line leaves the 0.9 default, which means "no status line".
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        self._write(error_reply(code, message or HTTPStatus(code).phrase))

    @property
    def _owner(self) -> _Server:
        assert isinstance(self.server, _Server)
        return self.server

    def _handle(self) -> None:
        site = self._owner.site
        if self._owner.stopping.is_set():
            # A request on a connection kept from before the stop: no answer.
            self.close_connection = True
            return
        try:
            request = self._parse()
        except BadRequest as exc:
            # The request's end is unknown (no or a bad body length): the connection cannot
            # carry another request.
            self.close_connection = True
            self._write(error_reply(400, str(exc)))
            return
        if request.path.startswith(CONTROL_PREFIX):
            # Not Garmin's: answered at once, without faults, and left out of the counts.
            self._write(self._owner.control(request))
            return
        site.arrived(request.path)
        try:
            ending = self._answer(site, request)
        finally:
            # Before the client hears back, so its next request never overlaps this one in
            # the in-flight counts.
            site.left(request.path)
        if isinstance(ending, Reply):
            self._write(ending)
        elif ending == FAULT_RESET:
            self._reset_connection()
        else:
            self.close_connection = True

    def _answer(self, site: Site, request: Incoming) -> Reply | str:
        """The reply, or the fault (FAULT_RESET, FAULT_HANG) that ends the exchange instead."""
        self._owner.pause(site.latency_seconds)
        fault = site.take_fault(request.path)
        if fault is not None:
            if fault.status == FAULT_RESET:
                return FAULT_RESET
            self._owner.pause(fault.delay)
            if fault.status == FAULT_HANG:
                return FAULT_HANG
            if fault.status is not None:
                return fault.reply()
        try:
            return site.route(request)
        except BadRequest as exc:
            return error_reply(400, str(exc))
        except Exception:
            log.exception("emulator: handler failed")
            return error_reply(500, "internal error")

    def _parse(self) -> Incoming:
        split = urlsplit(self.path)
        length_header = self.headers.get("Content-Length") or "0"
        if not length_header.isdigit():
            raise BadRequest("bad Content-Length")
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise BadRequest("body too large")
        body = self.rfile.read(length) if length else b""
        # The adapter's transport keeps the original host here; direct callers use Host.
        forwarded = self.headers.get("X-Forwarded-Host")
        origin = f"https://{forwarded}" if forwarded else f"http://{self.headers.get('Host', '')}"
        return Incoming(
            method=self.command,
            path=split.path,
            raw_query=split.query,
            headers=dict(self.headers.items()),
            body=body,
            original_url=origin + self.path,
            cookies=self._cookies(),
        )

    def _cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.get_all("Cookie") or []:
            try:
                jar.load(header)
            except CookieError:
                continue
        return {name: morsel.value for name, morsel in jar.items()}

    def _reset_connection(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST: the client sees "connection reset".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _write(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:
            # The client went away (timed out, reset): nothing left to tell it.
            self.close_connection = True
