"""Health: what the service names mean, and the health-only listener.

Names (grpc.health.v1.Health/Check `service`):

- "" and "liveness": SERVING while the process runs (NOT_SERVING once it stops gracefully).
  Never tied to the database: a database outage must not make Kubernetes restart every
  replica into a crash loop.
- "readiness" and "garmin_auth.v1.GarminAuthService": SERVING only while the database
  answers (checked every couple of seconds), so a replica without its database is taken out
  of the Service's endpoints and put back by itself.

The health listener (GARMIN_AUTH_HEALTH_LISTEN, default 0.0.0.0:8081, plaintext, only the
Health service) is what probes use. It is an asyncio gRPC server on its own thread and event
loop: a call waiting for its request costs a coroutine, not a thread, so no number of idle
connections or streams keeps it from answering, and nothing on the main port (TLS, callers,
busy threads) is in its way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import _async as async_health
from grpc_health.v1 import health, health_pb2

from auth_service.api.decoding import refuse_if_undecodable, tolerant
from auth_service.api.errors import to_status
from auth_service.api.method_access import SERVICE_NAME
from auth_service.domain.errors import InvalidArgument

log = logging.getLogger(__name__)

LIVENESS_NAMES = ("", "liveness")
READINESS_NAMES = ("readiness", SERVICE_NAME)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CALL_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")
# Probes are tiny; a connection carries a handful of them at a time, idles briefly and is
# recycled often, so a client cannot pin resources on this listener for long.
HEALTH_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 4096),
    ("grpc.max_concurrent_streams", 4),
    ("grpc.max_connection_idle_ms", 30_000),
    ("grpc.max_connection_age_ms", 60_000),
    ("grpc.max_connection_age_grace_ms", 5_000),
    # A second process on the same port must fail to start, not share the probes.
    ("grpc.so_reuseport", 0),
]


class HealthListenerError(OSError):
    """The health listener could not bind its address."""


_loop_lock = threading.Lock()
_shared_loop: asyncio.AbstractEventLoop | None = None


def _health_loop() -> asyncio.AbstractEventLoop:
    """The one event loop (on its own daemon thread) every health listener of the process
    runs on: gRPC's asyncio support binds to a single loop per process."""
    global _shared_loop  # noqa: PLW0603 - one loop per process, created on first use
    with _loop_lock:
        if _shared_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="health-listener", daemon=True).start()
            _shared_loop = loop
        return _shared_loop


def _tolerant_health_handlers(servicer: async_health.HealthServicer) -> grpc.GenericRpcHandler:
    """The Health service as health_pb2_grpc registers it, except that request bytes which
    are not a HealthCheckRequest answer INVALID_ARGUMENT (auth_service.api.decoding), as on
    the main port, never gRPC's own UNKNOWN with an ERROR traceback in the log."""
    deserializer = tolerant(health_pb2.HealthCheckRequest.FromString)

    async def refuse_if_undecodable_request(request: Any, context: Any) -> None:
        try:
            refuse_if_undecodable(request)
        except InvalidArgument as refused:
            status = to_status(refused)
            await context.abort(status.code, status.details, status.trailing_metadata)

    async def check(request: Any, context: Any) -> Any:
        await refuse_if_undecodable_request(request, context)
        return await servicer.Check(request, context)

    async def watch(request: Any, context: Any) -> None:
        await refuse_if_undecodable_request(request, context)
        await servicer.Watch(request, context)

    serializer = health_pb2.HealthCheckResponse.SerializeToString
    return grpc.method_handlers_generic_handler(
        health.SERVICE_NAME,
        {
            "Check": grpc.unary_unary_rpc_method_handler(check, deserializer, serializer),
            "Watch": grpc.unary_stream_rpc_method_handler(watch, deserializer, serializer),
        },
    )


class HealthListener:
    """The health-only asyncio gRPC server, on the process's health event loop."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = 0
        self._loop = _health_loop()
        self._servicer: async_health.HealthServicer | None = None
        self._server: grpc.aio.Server | None = None

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_SECONDS) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> HealthListener:
        self._run(self._start())
        return self

    async def _start(self) -> None:
        # Created on the loop: the servicer's locks and conditions belong to it.
        servicer = async_health.HealthServicer()
        server = grpc.aio.server(options=HEALTH_SERVER_OPTIONS)
        server.add_generic_rpc_handlers((_tolerant_health_handlers(servicer),))
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise HealthListenerError(f"cannot listen on {self.address} ({exc})") from None
        for name in LIVENESS_NAMES:
            await servicer.set(name, SERVING)
        for name in READINESS_NAMES:
            await servicer.set(name, NOT_SERVING)
        await server.start()
        self._servicer, self._server = servicer, server

    def set(self, names: Iterable[str], status: int) -> None:
        servicer = self._servicer
        assert servicer is not None

        async def apply() -> None:
            for name in names:
                await servicer.set(name, status)

        self._run(apply())

    def enter_graceful_shutdown(self) -> None:
        assert self._servicer is not None
        self._run(self._servicer.enter_graceful_shutdown())

    def stop(self, grace: float) -> None:
        if self._server is not None:
            self._run(self._server.stop(grace), grace + CALL_TIMEOUT_SECONDS)
            self._server = None


# How long a stop waits for the main port's Watch streams to take NOT_SERVING.
SHUTDOWN_NOTICE_SECONDS = 2.0


class EndingHealthServicer(health.HealthServicer):
    """The main port's health servicer (non-blocking Watch), which sends to Watch streams only
    outside the lock the call's close takes, and whose streams a stop ends once they have
    NOT_SERVING (`end_watches`).

    grpc_health's own sends under that lock: a send waits for its completion, which grpc's
    server thread delivers only after running the close of a call being cancelled meanwhile,
    which waits for the lock. So a status set while a watcher hung up, or a stop's NOT_SERVING
    to a watcher leaving, froze that thread, and with it the stop, for good. And a stream
    never ends by itself: a stop waited the whole grace period for each one open."""

    def __init__(self) -> None:
        super().__init__(experimental_non_blocking=True)
        # Serialises the sends of statuses (in order, one status at a time); never taken by
        # grpc's threads, unlike self._lock.
        self._sending = threading.Lock()
        self._ending = False
        self._shut_down = False  # NOT_SERVING for good (enter_graceful_shutdown)

    def Watch(  # noqa: N802 (grpc's name)
        self, request: Any, context: Any, send_response_callback: Any = None
    ) -> Any:
        if send_response_callback is None:  # a server without non-blocking streams
            return super().Watch(request, context)
        send = _ended_once(send_response_callback)
        service = request.service
        with self._sending:
            with self._lock:
                status = self._server_status.get(
                    service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                )
                ending = self._ending
                if not ending:
                    self._send_response_callbacks.setdefault(service, set()).add(send)
            send(health_pb2.HealthCheckResponse(status=status))
        if ending:
            send(None)  # past the notice: the status is all this stream could say
            return None
        if not context.add_callback(lambda: self._closed(service, send)):
            self._closed(service, send)  # the call has ended already
        return None

    def _closed(self, service: str, send: Callable[[Any], None]) -> None:
        with self._lock:
            self._send_response_callbacks.get(service, set()).discard(send)
        send(None)

    def set(self, service: str, status: Any) -> None:
        with self._sending:
            with self._lock:
                if self._shut_down:
                    return
                self._server_status[service] = status
                watchers = list(self._send_response_callbacks.get(service, ()))
            for send in watchers:
                send(health_pb2.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self) -> None:
        with self._sending:
            with self._lock:
                if self._shut_down:
                    return
                self._shut_down = True
                for service in self._server_status:
                    self._server_status[service] = NOT_SERVING
                watchers = [
                    send for sends in self._send_response_callbacks.values() for send in sends
                ]
            for send in watchers:
                send(health_pb2.HealthCheckResponse(status=NOT_SERVING))

    def end_watches(self) -> None:
        """End every Watch stream (OK), for good: call after enter_graceful_shutdown, whose
        NOT_SERVING each has been sent first."""
        with self._lock:
            self._ending = True
            # Every live stream's send is in grpc_health's registry (Watch adds it, its
            # close takes it out): that registry is the one list of streams to end.
            ends = [send for sends in self._send_response_callbacks.values() for send in sends]
            self._send_response_callbacks.clear()
        for end in ends:
            end(None)


def _ended_once(send: Callable[[Any], None]) -> Callable[[Any], None]:
    """`send` (grpc's send_response_callback: a message, or None for the call's status),
    passing on nothing once the status was sent: grpc sends a second status of a call
    (ours at a stop, then the servicer's when the call closes) as a second batch on a call
    that has ended, which the server then waits for as it stops."""
    lock = threading.Lock()
    ended = False

    def send_once(response: Any) -> None:
        nonlocal ended
        if response is not None:
            if not ended:
                send(response)
            return
        with lock:
            if ended:
                return
            ended = True
        send(None)

    return send_once


class HealthBoard:
    """Every health servicer of the replica (the main port's, the health listener's), set
    together."""

    def __init__(self, main: EndingHealthServicer, listener: HealthListener | None) -> None:
        self.main = main
        self.listener = listener
        self._set(LIVENESS_NAMES, SERVING)
        self._set(READINESS_NAMES, NOT_SERVING)

    def _set(self, names: Iterable[str], status: int) -> None:
        names = tuple(names)
        for name in names:
            self.main.set(name, status)
        if self.listener is not None:
            try:
                self.listener.set(names, status)
            # The probe thread calls this every few seconds; it must outlive a hiccup.
            except Exception:
                log.exception("the health listener did not take status %s", status)

    def set_ready(self, ready: bool) -> None:
        self._set(READINESS_NAMES, SERVING if ready else NOT_SERVING)

    def enter_graceful_shutdown(self) -> None:
        """Everything NOT_SERVING, for good: the replica is on its way out. The main port's
        servicer hands the status to its Watch streams itself (outside grpc_health's lock),
        and one whose call is being torn down can still hold that hand-over (grpc waits on
        the call's send): the stop waits for it a bounded time, then goes on (stopping the
        server ends those calls)."""

        def notice_then_end() -> None:
            self.main.enter_graceful_shutdown()
            self.main.end_watches()

        notice = threading.Thread(target=notice_then_end, name="health-shutdown", daemon=True)
        notice.start()
        notice.join(SHUTDOWN_NOTICE_SECONDS)
        if notice.is_alive():
            log.warning(
                "a health Watch did not take NOT_SERVING within %gs; stopping anyway",
                SHUTDOWN_NOTICE_SECONDS,
            )
        if self.listener is not None:
            self.listener.enter_graceful_shutdown()
