"""One server interceptor around every GarminAuthService RPC: authenticate the caller, check
its role, log one line, and turn exceptions into statuses through the error table. The
servicer methods therefore stay plain translators."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from auth_service.api.callers import Caller, CallerRegistry
from auth_service.api.errors import INTERNAL_ROW, row_for, to_status
from auth_service.domain.context import current_caller_name
from auth_service.domain.errors import DomainError

SERVICE_PREFIX = "/garmin_auth.v1.GarminAuthService/"

log = logging.getLogger("auth_service.rpc")


UnaryBehavior = Callable[[Any, grpc.ServicerContext], Any]


def _metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


class ServiceInterceptor(grpc.ServerInterceptor):
    """Authentication, authorisation, logging and error mapping for our service's RPCs."""

    def __init__(self, registry: CallerRegistry) -> None:
        self._registry = registry

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIX) or handler.unary_unary is None:
            return handler
        rpc = method.removeprefix(SERVICE_PREFIX)
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(rpc, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, rpc: str, behavior: UnaryBehavior) -> UnaryBehavior:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            caller: Caller | None = None
            outcome = "OK"
            try:
                caller = self._registry.authenticate(_metadata_value(context, "authorization"))
                self._registry.authorize(caller, rpc)
                token = current_caller_name.set(caller.name)
                try:
                    return behavior(request, context)
                finally:
                    current_caller_name.reset(token)
            # Every error must become a documented status, so catch them all here.
            except Exception as exc:
                row = row_for(exc)
                outcome = row.reason
                if row is INTERNAL_ROW and not isinstance(exc, DomainError):
                    log.exception("unexpected error in %s", rpc, extra={"rpc": rpc})
                context.abort_with_status(to_status(exc))
                raise  # unreachable: abort_with_status raises
            finally:
                log.info(
                    "%s %s",
                    rpc,
                    outcome,
                    extra={
                        "rpc": rpc,
                        "caller": caller.name if caller else None,
                        "outcome": outcome,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )

        return guarded
