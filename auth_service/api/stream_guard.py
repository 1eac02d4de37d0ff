"""Cutting off server streams whose consumer stopped reading (WatchSessionEvents).

gRPC's sync server sends a stream's messages one at a time on the stream's thread and waits
until each is handed to the transport; HTTP/2 flow control holds it there once the consumer
stops reading and the windows fill. So nothing is buffered without bound, but the thread
would wait for ever. The guard notes when each message starts waiting to be sent; one
watchdog thread per replica cuts off a stream whose message waited longer than the bound.

The cut must carry its reason. A normal status is queued behind the unsent messages, so it
would wait too; cancelling the call with a status sends the trailers (HTTP/2 HEADERS, which
flow control does not hold) and resets the stream, so the consumer reads what it received
and then RESOURCE_EXHAUSTED with a message naming CONSUMER_TOO_SLOW (no ErrorInfo: a
cancellation carries a code and a message only). grpcio exposes that cancellation only on
its call object, so this module reaches for it, and falls back to a plain cancel (CANCELLED)
should a grpcio release move it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from auth_service.domain.errors import ConsumerTooSlow, DomainError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Stream:
    context: grpc.ServicerContext
    # When the message being sent started waiting; None while the stream waits for data.
    sending_since: float | None = None


def _cut_off(context: grpc.ServicerContext, error: DomainError) -> None:
    """Cancel the call with `error`'s code and a message naming its reason."""
    message = f"{error.reason}: {error.message}"
    call: Any = getattr(getattr(context, "_rpc_event", None), "call", None)
    cancel_with_status = getattr(call, "cancel", None)
    if cancel_with_status is not None:
        code_number = getattr(grpc.StatusCode, error.code_name).value[0]
        cancel_with_status(code_number, message)
    else:
        context.cancel()


class SendGuard:
    """Tracks the streams of one replica; cuts off those stuck sending longer than `bound`."""

    def __init__(self, bound_seconds: float) -> None:
        self._bound = bound_seconds
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Set by stop(): every stream ends with it before its next message.
        self._stopped_with: DomainError | None = None

    def guarded(self, items: Iterable[T], context: grpc.ServicerContext) -> Iterator[T]:
        """`items`, each timed from the moment it is handed to gRPC until gRPC asks for the
        next one (which it does only once the previous one was sent)."""
        stream = _Stream(context)
        key = id(stream)
        with self._lock:
            self._streams[key] = stream
            self._start_watchdog()
        try:
            for item in items:
                if self._stopped_with is not None:
                    raise copy.copy(self._stopped_with)
                stream.sending_since = time.monotonic()
                yield item
                stream.sending_since = None
        finally:
            with self._lock:
                self._streams.pop(key, None)

    def stop(self, error: DomainError) -> int:
        """The replica is stopping: every stream ends with `error`. One whose message waits
        to be sent is cut off now (its thread is parked in gRPC's send, where it never sees
        the stop); the others before their next message, or when they next wait for data
        (SessionEvents.stop). Returns how many were cut off."""
        with self._lock:
            self._stopped_with = error
            stuck = [
                (key, stream)
                for key, stream in self._streams.items()
                if stream.sending_since is not None
            ]
            for key, _stream in stuck:
                self._streams.pop(key, None)
        for _key, stream in stuck:
            _cut_off(stream.context, error)
        return len(stuck)

    def _start_watchdog(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="stream-guard", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        interval = min(1.0, self._bound / 4)
        while True:
            time.sleep(interval)
            now = time.monotonic()
            with self._lock:
                if not self._streams:  # started again by the next stream
                    self._thread = None
                    return
                stuck = [
                    (key, stream)
                    for key, stream in self._streams.items()
                    if stream.sending_since is not None and now - stream.sending_since > self._bound
                ]
                for key, _stream in stuck:
                    self._streams.pop(key, None)
            for _key, stream in stuck:
                error = ConsumerTooSlow(
                    f"an event waited more than {self._bound:g} s to be sent; reconnect "
                    "with the last cursor read"
                )
                log.warning("cutting off a stream whose consumer stopped reading")
                _cut_off(stream.context, error)
