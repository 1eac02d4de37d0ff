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
import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from auth_service.domain.errors import ConsumerTooSlow, DomainError

log = logging.getLogger(__name__)
T = TypeVar("T")

# At a stop, how long a stream sending its message gets to hand it over before it is cut off.
STOP_SETTLE_SECONDS = 0.5


@dataclass
class _Stream:
    context: grpc.ServicerContext
    # When the message being sent started waiting; None while the stream waits for data.
    sending_since: float | None = None


# The streams cut off with a status, by id of their context, until the interceptor that
# records the call's outcome takes theirs (cut_off_error): gRPC then closes the stream's
# generator, which alone would read as the consumer's CANCELLED.
_cut_streams: dict[int, tuple[grpc.ServicerContext, DomainError]] = {}
_cut_lock = threading.Lock()


def cut_off_error(context: grpc.ServicerContext) -> DomainError | None:
    """The error a stream of `context` was cut off with, once (None: it was not)."""
    with _cut_lock:
        entry = _cut_streams.pop(id(context), None)
    return entry[1] if entry is not None and entry[0] is context else None


def _cut_off(context: grpc.ServicerContext, error: DomainError) -> None:
    """Cancel the call with `error`'s code and a message naming its reason."""
    with _cut_lock:
        _cut_streams[id(context)] = (context, error)
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
                with self._lock:  # with stop(): a stream is either stopped or seen sending
                    if self._stopped_with is not None:
                        raise copy.copy(self._stopped_with)
                    stream.sending_since = time.monotonic()
                yield item
                stream.sending_since = None
        finally:
            with self._lock:
                self._streams.pop(key, None)

    def stop(self, error: DomainError, settle_seconds: float = STOP_SETTLE_SECONDS) -> int:
        """The replica is stopping: every stream ends with `error`, before its next message
        or when it next waits for data (SessionEvents.stop). One whose message still waits
        to be sent `settle_seconds` later is cut off (its thread is parked in gRPC's send,
        where it never sees the stop); a consumer that reads promptly takes its message
        meanwhile and gets the status with its details. Returns how many were cut off."""
        with self._lock:
            self._stopped_with = error
            sending = any(stream.sending_since is not None for stream in self._streams.values())
        if sending:
            time.sleep(settle_seconds)
        with self._lock:
            stuck = self._take_sending(waited_more_than=-math.inf)  # every one still sending
        for stream in stuck:
            _cut_off(stream.context, error)
        return len(stuck)

    def _take_sending(self, waited_more_than: float) -> list[_Stream]:
        """Under the lock: the streams whose message has waited to be sent longer than
        `waited_more_than` seconds, no longer tracked (each is cut off once)."""
        now = time.monotonic()
        stuck = {
            key: stream
            for key, stream in self._streams.items()
            if stream.sending_since is not None and now - stream.sending_since > waited_more_than
        }
        for key in stuck:
            del self._streams[key]
        return list(stuck.values())

    def _start_watchdog(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="stream-guard", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        interval = min(1.0, self._bound / 4)
        while True:
            time.sleep(interval)
            with self._lock:
                if not self._streams:  # started again by the next stream
                    self._thread = None
                    return
                stuck = self._take_sending(waited_more_than=self._bound)
            for stream in stuck:
                error = ConsumerTooSlow(
                    f"an event waited more than {self._bound:g} s to be sent; reconnect "
                    "with the last cursor read"
                )
                log.warning("cutting off a stream whose consumer stopped reading")
                _cut_off(stream.context, error)
