"""Webhook receivers over real sockets that never quite answer: each keeps a POST alive by
sending a byte now and then (never idle for a whole read timeout), or sends far more than an
acknowledgement needs; or one that answers plainly and keeps the connection for the next POST.
They count the connections they accepted, the POSTs they hold, and the most held at once."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# A flooding receiver's send buffer (Linux doubles it): what the client did not take stays
# mostly in the receiver, so what it counts as sent is close to what the client read.
FLOOD_SEND_BUFFER = 256 * 1024


@dataclass
class SlowReceiver:
    """`mode`, how it answers each POST (the first as `first`, if given):
    "plain": 200 with a short body at once;
    "body": answers 200 at once, then its body one byte every `interval` s for `duration` s;
    "headers": its status line and headers one byte every `interval` s;
    "flood": answers 200 with a body of `flood` bytes, as fast as the client takes them.
    Every answer keeps the connection open for the client's next POST."""

    mode: str
    first: str | None = None
    interval: float = 0.25
    duration: float = 30.0
    flood: int = 128 * 1024 * 1024
    connections: int = 0
    posts: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    body_bytes_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections += 1
        with conn:
            conn.settimeout(5)
            while _read_request(conn):
                with self.lock:
                    mode = self.first if self.first and self.posts == 0 else self.mode
                    self.posts += 1
                    self.in_flight += 1
                    self.most_in_flight = max(self.most_in_flight, self.in_flight)
                try:
                    self._answer(conn, mode)
                except OSError:
                    return  # the client hung up: what a bounded sender does
                finally:
                    with self.lock:
                        self.in_flight -= 1

    def _answer(self, conn: socket.socket, mode: str) -> None:
        ticks = int(self.duration / self.interval)
        if mode == "plain":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif mode == "body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % ticks)
            self._trickle(conn, b"x" * ticks, counted=True)
        elif mode == "headers":
            padding = b"X-Padding: " + b"x" * ticks + b"\r\n"
            self._trickle(conn, b"HTTP/1.1 200 OK\r\n" + padding + b"\r\n", counted=False)
        else:
            self._flood(conn)

    def _trickle(self, conn: socket.socket, data: bytes, *, counted: bool) -> None:
        for index in range(len(data)):
            if self.stopping.wait(self.interval):
                return
            conn.sendall(data[index : index + 1])
            if counted:
                with self.lock:
                    self.body_bytes_sent += 1

    def _flood(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, FLOOD_SEND_BUFFER)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.flood)
        block = b"x" * 65536
        sent = 0
        while sent < self.flood and not self.stopping.is_set():
            conn.sendall(block)
            sent += len(block)
            with self.lock:
                self.body_bytes_sent = sent


def _read_request(conn: socket.socket) -> bool:
    """Reads one request, headers and Content-Length body; False if the client left (or kept
    the connection idle for 5 s)."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return False
        if not chunk:
            return False
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        rest += chunk
    return True


@contextmanager
def serving(receiver: SlowReceiver) -> Iterator[int]:
    """Serve `receiver` on a free port of 127.0.0.1 until the block ends."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)

    def accept() -> None:
        while not receiver.stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=receiver.serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        receiver.stopping.set()
        thread.join(timeout=5)
        listener.close()
