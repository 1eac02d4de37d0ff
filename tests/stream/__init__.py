"""Helpers of the change stream and webhook tests (issue 16): changes made through the real
RPCs, followers that read a WatchSessionEvents stream on a thread of their own (so a test
waits for what it expects with a timeout), and a real HTTP webhook receiver."""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.fixtures.servers import ROLE_TOKENS
from tests.reliability import session_proto

WEBHOOK_SECRET = "webhook-secret-0123456789abcdef"


def bearer(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {ROLE_TOKENS[role]}"),)


def connect(stub: pb_grpc.GarminAuthServiceStub, user_id: str) -> None:
    """One change: the user's session imported (ACTIVE). No call to Garmin."""
    stub.ImportSession(
        pb.ImportSessionRequest(user_id=user_id, session=session_proto(user_id)),
        metadata=bearer("admin"),
        timeout=20,
    )


def disconnect(stub: pb_grpc.GarminAuthServiceStub, user_id: str) -> None:
    """One change (the user had a row): NOT_CONNECTED."""
    stub.DeleteSession(
        pb.DeleteSessionRequest(user_id=user_id), metadata=bearer("admin"), timeout=20
    )


def watch(stub: pb_grpc.GarminAuthServiceStub, role: str | None = "viewer", **request: Any) -> Any:
    """A WatchSessionEvents call (an iterator of SessionEvent, cancellable)."""
    metadata = () if role is None else bearer(role)
    return stub.WatchSessionEvents(pb.WatchSessionEventsRequest(**request), metadata=metadata)


@dataclass
class Follower:
    """Reads a stream on a thread into a queue: changes and heartbeats, then its end."""

    call: Any
    items: queue.Queue[pb.SessionEvent | grpc.RpcError | None] = field(default_factory=queue.Queue)
    changes: list[pb.SessionEvent] = field(default_factory=list)
    heartbeats: list[pb.SessionEvent] = field(default_factory=list)
    ended: grpc.RpcError | None = None

    def start(self) -> Follower:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            for event in self.call:
                self.items.put(event)
        except grpc.RpcError as error:
            self.items.put(error)
            return
        self.items.put(None)

    def _take(self, timeout: float) -> None:
        item = self.items.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            self.ended = item
            raise AssertionError(f"stream ended: {item.code()} {item.details()}")  # noqa: TRY004
        if item is None:
            raise AssertionError("stream ended without a status")
        if item.HasField("status"):
            self.changes.append(item)
        else:
            self.heartbeats.append(item)

    def wait_heartbeat(self, timeout: float = 15) -> pb.SessionEvent:
        seen = len(self.heartbeats)
        deadline = time.monotonic() + timeout
        while len(self.heartbeats) == seen:
            self._take(max(deadline - time.monotonic(), 0.01))
        return self.heartbeats[-1]

    def wait_changes(self, count: int, timeout: float = 30) -> list[pb.SessionEvent]:
        deadline = time.monotonic() + timeout
        while len(self.changes) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.changes)} of {count} changes")
            try:
                self._take(remaining)
            except queue.Empty:
                continue
        return self.changes

    def wait_end(self, timeout: float = 30) -> grpc.RpcError | None:
        deadline = time.monotonic() + timeout
        while True:
            item = self.items.get(timeout=max(deadline - time.monotonic(), 0.01))
            if isinstance(item, grpc.RpcError) or item is None:
                return item

    def cancel(self) -> None:
        self.call.cancel()


def positions(events: list[pb.SessionEvent]) -> list[int]:
    return [int(event.cursor) for event in events]


# --- a webhook receiver over real HTTP --------------------------------------------------------


@dataclass
class Delivery:
    """One POST the receiver got."""

    body: bytes
    signature: str
    received_at: float


@dataclass
class Receiver:
    """Records every POST; answers `status`; counts POSTs in flight at once."""

    status: int = 200
    delay: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                try:
                    time.sleep(receiver.delay)
                    status = receiver.status
                    if status == 200:
                        with receiver.lock:
                            receiver.deliveries.append(
                                Delivery(
                                    body,
                                    self.headers.get("X-Garmin-Auth-Signature", ""),
                                    time.time(),
                                )
                            )
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return

        return Handler


@contextmanager
def receiving(receiver: Receiver, port: int = 0) -> Iterator[int]:
    """Serve `receiver` on 127.0.0.1:`port` (0: a free one) until the block ends."""
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), receiver.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def verify(delivery: Delivery, secret: str = WEBHOOK_SECRET) -> bool:
    """What a receiver does: recompute the signature over `t.body`, compare in constant time."""
    parts = dict(item.split("=", 1) for item in delivery.signature.split(","))
    expected = hmac.new(
        secret.encode(), parts["t"].encode() + b"." + delivery.body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])
