"""One server interceptor around every GarminAuthService RPC: authenticate the caller, check
its role, log one line, count it in the replica's metrics, and turn exceptions into statuses
through the error table. The servicer methods therefore stay plain translators.

The health service's unary Check is counted in the metrics too. The streaming RPCs (health
Watch, reflection) pass through untouched: wrapping them would hide health Watch's
non-blocking handler from gRPC, and they are not worth that."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from auth_service.api.callers import Caller, CallerRegistry, current_caller
from auth_service.api.errors import INTERNAL_ROW, row_for, to_status
from auth_service.domain.context import current_caller_name
from auth_service.domain.errors import DomainError, FieldViolation, InvalidArgument
from auth_service.domain.events import current_listener
from auth_service.metrics.service import ServiceMetrics
from auth_service.tls import certificate_identities

SERVICE_NAME = "garmin_auth.v1.GarminAuthService"
SERVICE_PREFIX = f"/{SERVICE_NAME}/"
# RPCs whose successful answer carries a lease (LeaseNextSession's only when one was due).
GRANTING_RPCS = frozenset({"LeaseSession", "LeaseNextSession"})
LEASE_LOST = "LEASE_LOST"

log = logging.getLogger("auth_service.rpc")


UnaryBehavior = Callable[[Any, grpc.ServicerContext], Any]
Deserializer = Callable[[bytes], Any]


class _Undecodable:
    """Stands for request bytes that are not a well-formed message of the RPC's type.

    gRPC itself answers INTERNAL ("Exception deserializing request!") when a deserializer
    raises, before any interceptor runs; bad input must answer INVALID_ARGUMENT instead, and
    only after the caller was authenticated (an anonymous caller learns nothing more)."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


def _tolerant(deserializer: Deserializer | None) -> Deserializer | None:
    if deserializer is None:
        return None
    message_name = getattr(getattr(deserializer, "__self__", None), "__name__", "request")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        # Whatever the protobuf runtime raises on malformed bytes (DecodeError, invalid
        # UTF-8 in a string field, ...): the bytes, not the service, are at fault.
        except Exception:  # noqa: BLE001
            return _Undecodable(message_name)

    return deserialize


def _refuse_if_undecodable(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            [FieldViolation("request", f"is not a well-formed {request.message_name} message")]
        )


def _metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


def _split_method(method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _status_name(context: grpc.ServicerContext) -> str | None:
    # ServicerContext.code() exists since grpcio 1.38; grpc-stubs does not know it yet.
    code = getattr(context, "code", lambda: None)()
    return code.name if isinstance(code, grpc.StatusCode) else None


class ServiceInterceptor(grpc.ServerInterceptor):
    """Authentication, authorisation, logging, metrics and error mapping for our RPCs."""

    def __init__(
        self,
        registry: CallerRegistry,
        metrics: ServiceMetrics | None = None,
        *,
        client_certificates: bool = False,
    ) -> None:
        """`client_certificates`: the server runs mutual TLS, so the certificate a client
        presents was verified against GARMIN_AUTH_TLS_CLIENT_CA and may name the caller.
        Without it certificates are never looked at."""
        self._registry = registry
        self._metrics = metrics
        self._client_certificates = client_certificates

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.unary_unary is None:
            return handler
        deserializer = handler.request_deserializer
        if method.startswith(SERVICE_PREFIX):
            behavior = self._wrap(method.removeprefix(SERVICE_PREFIX), handler.unary_unary)
            deserializer = _tolerant(deserializer)
        elif self._metrics is not None:
            behavior = self._counted(*_split_method(method), handler.unary_unary)
        else:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

    def _certificate_names(self, context: grpc.ServicerContext) -> tuple[str, ...]:
        if not self._client_certificates:
            return ()
        return certificate_identities(context.auth_context())

    def _wrap(self, rpc: str, behavior: UnaryBehavior) -> UnaryBehavior:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            caller: Caller | None = None
            outcome = code = "OK"
            response: Any = None
            if self._metrics is not None:
                self._metrics.rpc_started(SERVICE_NAME, rpc)
            # The domain and the upstream adapter report lease takeovers and calls to Garmin
            # to whoever listens for this RPC: this replica's metrics.
            listening = current_listener.set(self._metrics)
            try:
                caller = self._registry.authenticate(
                    _metadata_value(context, "authorization"), self._certificate_names(context)
                )
                self._registry.authorize(caller, rpc)
                _refuse_if_undecodable(request)
                token = current_caller_name.set(caller.name)
                caller_token = current_caller.set(caller)
                try:
                    response = behavior(request, context)
                    return response
                finally:
                    current_caller.reset(caller_token)
                    current_caller_name.reset(token)
            # Every error must become a documented status, so catch them all here.
            except Exception as exc:
                row = row_for(exc)
                outcome, code = row.reason, row.code.name
                if row is INTERNAL_ROW and not isinstance(exc, DomainError):
                    log.exception("unexpected error in %s", rpc, extra={"rpc": rpc})
                context.abort_with_status(to_status(exc))
                raise  # unreachable: abort_with_status raises
            finally:
                current_listener.reset(listening)
                latency = time.perf_counter() - started
                self._count(rpc, code, outcome, response, latency)
                log.info(
                    "%s %s",
                    rpc,
                    outcome,
                    extra={
                        "rpc": rpc,
                        "caller": caller.name if caller else None,
                        "outcome": outcome,
                        "latency_ms": round(latency * 1000, 2),
                    },
                )

        return guarded

    def _count(self, rpc: str, code: str, outcome: str, response: Any, latency: float) -> None:
        if self._metrics is None:
            return
        self._metrics.rpc_handled(SERVICE_NAME, rpc, code, latency)
        if rpc in GRANTING_RPCS and response is not None and response.HasField("lease"):
            self._metrics.lease_granted(rpc)
        if outcome == LEASE_LOST:
            self._metrics.lease_lost(rpc)

    def _counted(self, service: str, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        """Metrics only, for the other services' unary RPCs (health Check)."""
        metrics = self._metrics
        assert metrics is not None

        def counted(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            metrics.rpc_started(service, method)
            code = "UNKNOWN"
            try:
                response = behavior(request, context)
            except Exception:
                code = _status_name(context) or "UNKNOWN"
                raise
            else:
                # Health answers NOT_FOUND for an unknown service by setting the code.
                code = _status_name(context) or "OK"
                return response
            finally:
                metrics.rpc_handled(service, method, code, time.perf_counter() - started)

        return counted
