"""Handler plumbing: thread pools of their own for health and reflection, the cap on
reflection streams, wrapping a handler's behavior whatever its kind, and health's handler
(public, counted in the metrics)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from auth_service.api.decoding import refuse_if_undecodable, tolerant
from auth_service.api.errors import to_status
from auth_service.api.method_access import Access
from auth_service.domain.errors import InvalidArgument
from auth_service.metrics.service import ServiceMetrics

Behavior = Callable[..., Any]
Deserializer = Callable[[bytes], Any]


class StreamGate:
    """At most `limit` concurrent streams of one kind."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()

    @property
    def full(self) -> bool:
        return self._active >= self.limit

    def enter(self) -> bool:
        with self._lock:
            if self._active >= self.limit:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._active -= 1


@dataclass(frozen=True)
class Pools:
    """The thread pools apart from the server's own (which serves our RPCs)."""

    # Health Check/Watch on the main port: a few threads of their own.
    health: futures.ThreadPoolExecutor
    # Reflection streams: as many threads as the gate admits streams.
    reflection: futures.ThreadPoolExecutor
    reflection_gate: StreamGate
    # A reflection stream whose client sends nothing for this long is cancelled, so idle
    # streams do not keep the gate's slots.
    reflection_idle_seconds: float


def idle_limited(
    requests: Iterator[Any], context: grpc.ServicerContext, seconds: float
) -> Generator[Any, None, None]:
    """`requests`, but the call is cancelled when the client sends none for `seconds` (only
    the wait for the next request counts, not the handler's work on the last one)."""
    iterator = iter(requests)
    while True:
        # One timer thread per waiting stream; streams that get here are capped (StreamGate).
        timer = threading.Timer(seconds, context.cancel)
        timer.daemon = True
        timer.start()
        try:
            request = next(iterator)
        except StopIteration:
            return
        finally:
            timer.cancel()
        yield request


def with_pool(behavior: Behavior, pool: futures.ThreadPoolExecutor | None) -> Behavior:
    """`behavior`, run by gRPC on `pool` instead of the server's own thread pool."""
    if pool is None:
        return behavior

    def on_pool(*args: Any, **kwargs: Any) -> Any:
        return behavior(*args, **kwargs)

    # gRPC reads these attributes off the behavior (grpc._server).
    on_pool.experimental_thread_pool = pool  # type: ignore[attr-defined]
    non_blocking = getattr(behavior, "experimental_non_blocking", False)
    on_pool.experimental_non_blocking = non_blocking  # type: ignore[attr-defined]
    return on_pool


def same_kind(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Behavior], Behavior],
    stream: Callable[[Behavior], Behavior],
    deserializer: Deserializer | None,
) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind whose behavior is wrapped by `unary` (unary response)
    or `stream` (streaming response)."""
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), deserializer, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), deserializer, serializer
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        stream(handler.stream_stream), deserializer, serializer
    )


def status_name(context: grpc.ServicerContext) -> str | None:
    # ServicerContext.code() exists since grpcio 1.38; grpc-stubs does not know it yet.
    code = getattr(context, "code", lambda: None)()
    return code.name if isinstance(code, grpc.StatusCode) else None


def health_handler(
    access: Access,
    handler: grpc.RpcMethodHandler,
    metrics: ServiceMetrics | None,
    pools: Pools | None,
) -> grpc.RpcMethodHandler:
    """Health needs no caller: counted in the metrics, served on the health pool. Request
    bytes that are not a HealthCheckRequest answer INVALID_ARGUMENT, as for our RPCs
    (gRPC's own deserializer would answer INTERNAL and log a traceback, for anyone)."""
    pool = pools.health if pools is not None else None
    deserializer = tolerant(handler.request_deserializer)
    if handler.unary_unary is None:
        # Watch: non-blocking (no thread while it waits); only its request is read on
        # the pool.
        assert handler.unary_stream is not None
        return grpc.unary_stream_rpc_method_handler(
            with_pool(_decoded(handler.unary_stream), pool),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        with_pool(_counted(access, _decoded(handler.unary_unary), metrics), pool),
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


def _decoded(behavior: Behavior) -> Behavior:
    """`behavior`, answering an undecodable request (decoding.tolerant) INVALID_ARGUMENT.
    A non-blocking behavior (health's Watch) stays one: gRPC reads the attribute off it and
    then passes `send_response_callback`, and a blocking Watch would hold a health thread
    for the stream's life."""

    def decoded(request: Any, context: grpc.ServicerContext, *args: Any, **kwargs: Any) -> Any:
        try:
            refuse_if_undecodable(request)
        except InvalidArgument as refused:
            context.abort_with_status(to_status(refused))
        return behavior(request, context, *args, **kwargs)

    non_blocking = getattr(behavior, "experimental_non_blocking", False)
    decoded.experimental_non_blocking = non_blocking  # type: ignore[attr-defined]
    return decoded


def _counted(access: Access, behavior: Behavior, metrics: ServiceMetrics | None) -> Behavior:
    if metrics is None:
        return behavior
    service, method = access.service, access.method

    def counted(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        metrics.rpc_started(service, method)
        code = "UNKNOWN"
        try:
            response = behavior(request, context)
        except Exception:
            code = status_name(context) or "UNKNOWN"
            raise
        else:
            # Health answers NOT_FOUND for an unknown service by setting the code.
            code = status_name(context) or "OK"
            return response
        finally:
            metrics.rpc_handled(service, method, code, time.perf_counter() - started)

    return counted
