"""One server interceptor around every method the server exposes: look the method up in the
access table (auth_service.api.method_access: deny by default), authenticate the caller,
check its role, log one line, count it in the replica's metrics, and turn exceptions into
statuses through the error table. The servicer methods therefore stay plain translators.

Every handler kind (unary-unary, unary-stream, stream-unary, stream-stream) goes through the
same gate. A refusal is decided on gRPC's polling thread from the metadata alone, before a
worker thread is taken, and answered by a handler that never waits for the request: gRPC
reads a unary request on the worker thread before calling the handler, so an anonymous
client sending headers and no message would otherwise hold a thread for as long as it likes.
(Under mutual TLS a call without a token is let through to the handler, which reads the
client certificate; only a client whose certificate our CA signed gets that far.)

A stream outlives reloads of the callers file, so before each message it sends, a stream
whose file changed since it last looked authenticates its caller again: a revoked token, an
unusable file or a changed entry (roles, user_id_prefix) ends it as a new call would be
answered. Unary calls are decided once; they pay nothing for this.

Health and reflection run on their own small thread pools, so neither idle probes nor idle
reflection streams can take the threads our RPCs need; reflection streams are also capped
(excess: RESOURCE_EXHAUSTED TOO_MANY_STREAMS) and cancelled when they idle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from auth_service.api.access_log import AccessLog
from auth_service.api.callers import Caller, CallerRegistry, current_caller
from auth_service.api.decoding import checked_stream, refuse_if_undecodable, tolerant
from auth_service.api.errors import INTERNAL_ROW, row_for, to_status
from auth_service.api.handlers import (
    Behavior,
    Pools,
    StreamGate,
    health_handler,
    idle_limited,
    same_kind,
    status_name,
    with_pool,
)
from auth_service.api.method_access import (
    REFLECTION_METHODS,
    SERVICE_NAME,
    Access,
    Kind,
    access_for,
)
from auth_service.api.stream_guard import cut_off_error
from auth_service.domain.context import current_caller_name, rpc_deadline
from auth_service.domain.errors import (
    CallerForbidden,
    CallerUnauthenticated,
    DomainError,
    TooManyStreams,
)
from auth_service.domain.events import current_listener
from auth_service.metrics.service import ServiceMetrics
from auth_service.tls import certificate_identities

# RPCs whose successful answer carries a lease (LeaseNextSession's only when one was due).
GRANTING_RPCS = frozenset({"LeaseSession", "LeaseNextSession"})
LEASE_LOST = "LEASE_LOST"

log = logging.getLogger("auth_service.rpc")


def _metadata_value(metadata: Any, key: str) -> str | None:
    for item_key, value in metadata or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


@dataclass
class _Outcome:
    code: str = "OK"
    reason: str = "OK"
    response: Any = None
    # The name the access line gives: the caller's once its credentials were recognised, even
    # when it is then refused (its roles do not allow the RPC). Only the log reads it.
    caller: str | None = None


# grpc's sync server answers time_remaining() of a call without a deadline with its
# "infinite future" (about 9.2e18 s): anything past a day is no deadline at all.
_NO_DEADLINE_SECONDS = 86_400.0


def _deadline_of(context: grpc.ServicerContext) -> float | None:
    """The time.monotonic() by which the call must be answered (None: its client set no
    deadline)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_SECONDS:
        return None
    return time.monotonic() + remaining


@contextmanager
def _as_caller(caller: Caller | None) -> Iterator[None]:
    """Run the body as `caller` (for the domain's audit trail and scope checks)."""
    if caller is None:  # a public method: nobody to name
        yield
        return
    name_token = current_caller_name.set(caller.name)
    caller_token = current_caller.set(caller)
    try:
        yield
    finally:
        current_caller.reset(caller_token)
        current_caller_name.reset(name_token)


class ServiceInterceptor(grpc.ServerInterceptor):
    """Access control, logging, metrics and error mapping for every method."""

    def __init__(
        self,
        registry: CallerRegistry,
        metrics: ServiceMetrics | None = None,
        *,
        client_certificates: bool = False,
        open_reflection: bool = False,
        pools: Pools | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        """`client_certificates`: the server runs mutual TLS, so the certificate a client
        presents was verified against GARMIN_AUTH_TLS_CLIENT_CA and may name the caller.
        Without it certificates are never looked at. `access_log`: where each call's line
        goes (by default written at once, on the call's thread)."""
        self._registry = registry
        self._metrics = metrics
        self._client_certificates = client_certificates
        self._open_reflection = open_reflection
        self._pools = pools
        self._access_log = access_log or AccessLog.immediate()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # gRPC answers UNIMPLEMENTED
        access = access_for(handler_call_details.method, open_reflection=self._open_reflection)
        if access.kind is Kind.PUBLIC and access.service == "grpc.health.v1.Health":
            return health_handler(access, handler, self._metrics, self._pools)
        pool = None
        reflection = access.service != SERVICE_NAME and access.kind is not Kind.DENIED
        if reflection and self._pools is not None:
            if self._pools.reflection_gate.full:
                too_many = TooManyStreams("too many reflection streams; retry later")
                return self._refusal(access, handler, too_many)
            pool = self._pools.reflection
        # Decided here, on the polling thread: see the module docstring.
        authorization = _metadata_value(handler_call_details.invocation_metadata, "authorization")
        caller: Caller | None = None
        try:
            caller = self._identify_from_metadata(access, authorization)
            if caller is not None:
                self._authorize(access, caller)
        except DomainError as refused:
            # `caller` is set when authentication passed and the role check refused: the
            # access line names it (an operator looks for known callers trying RPCs).
            return self._refusal(access, handler, refused, caller)
        return self._guarded(access, handler, caller, authorization, pool)

    # --- the decision -------------------------------------------------------------------

    def _identify_from_metadata(self, access: Access, authorization: str | None) -> Caller | None:
        """The caller, when the metadata decides who it is; None when the handler must
        (public methods, and token-less calls under mutual TLS). Raises the refusal of a
        method open to nobody or of credentials that name no caller; roles are not checked."""
        if access.kind is Kind.DENIED:
            raise CallerForbidden(f"{access.service}/{access.method} is not open to any caller")
        if access.kind is Kind.PUBLIC:
            return None
        # An empty header is no token (CallerRegistry.authenticate reads it so too): the
        # certificate decides, as without the header.
        if not authorization and self._client_certificates:
            return None
        return self._registry.authenticate(authorization)

    def _identify(
        self, access: Access, context: grpc.ServicerContext, authorization: str | None
    ) -> Caller | None:
        """On the worker thread: who the caller is, by its token or its client certificate
        (None for a public method). Raises CALLER_UNAUTHENTICATED; roles are not checked."""
        if access.kind is Kind.PUBLIC:
            return None
        certificate_names = (
            certificate_identities(context.auth_context()) if self._client_certificates else ()
        )
        return self._registry.authenticate(authorization, certificate_names)

    def _admit(
        self, access: Access, context: grpc.ServicerContext, authorization: str | None
    ) -> Caller | None:
        """The caller, identified and allowed this method; raises the refusal."""
        caller = self._identify(access, context, authorization)
        if caller is not None:
            self._authorize(access, caller)
        return caller

    def _authorize(self, access: Access, caller: Caller) -> None:
        if access.kind is Kind.ROLES:
            self._registry.authorize(caller, access.method)

    # --- handlers -----------------------------------------------------------------------

    def _refusal(
        self,
        access: Access,
        handler: grpc.RpcMethodHandler,
        refused: DomainError,
        known: Caller | None = None,
    ) -> grpc.RpcMethodHandler:
        """A handler that answers `refused` at once. Request-streaming whatever the method's
        kind, so gRPC does not wait for a request message first (the status is all the
        client sees; its framing does not depend on the handler kind). `known`: the caller
        the credentials named, if they did, for the access line only."""
        refused_caller = known.name if known is not None else None

        def refuse(_requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            with self._call(
                access, context, None, precomputed=refused, refused_caller=refused_caller
            ):
                pass  # unreachable: _call aborts

        return grpc.stream_unary_rpc_method_handler(
            refuse, request_deserializer=None, response_serializer=handler.response_serializer
        )

    def _guarded(
        self,
        access: Access,
        handler: grpc.RpcMethodHandler,
        caller: Caller | None,
        authorization: str | None,
        pool: futures.ThreadPoolExecutor | None,
    ) -> grpc.RpcMethodHandler:
        ours = access.service == SERVICE_NAME
        # Ours and reflection: request bytes that are not a message of the RPC's type answer
        # INVALID_ARGUMENT (decoding.tolerant), never gRPC's own INTERNAL.
        decodes_tolerantly = ours or f"/{access.service}/{access.method}" in REFLECTION_METHODS
        streaming_requests = handler.request_streaming

        def prepared(request: Any) -> Any:
            if not decodes_tolerantly:
                return request
            if streaming_requests:
                return checked_stream(request)
            refuse_if_undecodable(request)
            return request

        def unary(behavior: Behavior) -> Behavior:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                with self._call(access, context, authorization, caller=caller) as outcome:
                    outcome.response = behavior(prepared(request), context)
                    return outcome.response

            return with_pool(guarded, pool)

        idle_seconds = (
            self._pools.reflection_idle_seconds
            if pool is not None and self._pools is not None and streaming_requests
            else None
        )

        def stream(behavior: Behavior) -> Behavior:
            def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with self._call(access, context, authorization, caller=caller) as outcome:
                    # A stream whose consumer went away (cancelled, disconnected) is no OK
                    # end: gRPC closes the generator (GeneratorExit), or the handler sees it
                    # go and returns (a watch never ends OK by itself).
                    try:
                        requests = prepared(request)
                        if idle_seconds is None:
                            replies = behavior(requests, context)
                            yield from self._while_admitted(replies, access, context, authorization)
                            if not context.is_active() and outcome.code == "OK":
                                outcome.reason = outcome.code = "CANCELLED"
                            return
                        # Reflection: a stream kept open without requests gives its slot back.
                        limited = idle_limited(requests, context, idle_seconds)
                        with closing(limited):
                            replies = behavior(limited, context)
                            yield from self._while_admitted(replies, access, context, authorization)
                    except GeneratorExit:
                        cut = cut_off_error(context)
                        if cut is None:
                            outcome.reason = outcome.code = "CANCELLED"
                        else:
                            # Cut off by the service (a stop, a consumer too slow): what
                            # the consumer read, not a consumer that went away.
                            row = row_for(cut)
                            outcome.reason, outcome.code = row.reason, row.code.name
                        raise

            return with_pool(guarded, pool)

        deserializer = handler.request_deserializer
        if decodes_tolerantly:
            deserializer = tolerant(deserializer)
        return same_kind(handler, unary, stream, deserializer)

    def _while_admitted(
        self,
        replies: Iterator[Any],
        access: Access,
        context: grpc.ServicerContext,
        authorization: str | None,
    ) -> Iterator[Any]:
        """`replies` (a stream's, run as its admitted caller), each let through only while
        the callers file still admits that caller as it was: checked again whenever the
        file's generation moved, and before the first reply (the file may have changed since
        the call was admitted). Raises the refusal a new call would get."""
        admitted = current_caller.get()
        try:
            if admitted is None:  # a public stream: nobody to check again
                yield from replies
                return
            seen: int | None = None
            for reply in replies:
                generation = self._registry.generation()
                if generation != seen:
                    self._readmit(access, context, authorization, admitted)
                    seen = generation
                yield reply
        finally:
            close = getattr(replies, "close", None)
            if close is not None:
                close()  # the handler's own clean-up (a watch's slot, its send guard)

    def _readmit(
        self,
        access: Access,
        context: grpc.ServicerContext,
        authorization: str | None,
        admitted: Caller,
    ) -> None:
        """Refuse as a new call with the same credentials would be refused; and end a stream
        whose credentials now stand for another caller (other roles or user_id_prefix): its
        filter and scope were those of the caller it was opened as."""
        caller = self._admit(access, context, authorization)
        if caller != admitted:
            raise CallerUnauthenticated(
                "the caller's entry in the callers file changed while this stream was open; "
                "call again"
            )

    @contextmanager
    def _call(
        self,
        access: Access,
        context: grpc.ServicerContext,
        authorization: str | None,
        *,
        caller: Caller | None = None,
        precomputed: DomainError | None = None,
        refused_caller: str | None = None,
    ) -> Iterator[_Outcome]:
        """One call from admission to its log line: the body runs as the admitted caller;
        whatever it raises becomes a documented status. `precomputed`: the refusal already
        decided, answered without running the body; `refused_caller`: whom its access line
        names (the body never runs as it)."""
        started = time.perf_counter()
        outcome = _Outcome(caller=caller.name if caller is not None else refused_caller)
        ours = access.service == SERVICE_NAME
        gate = self._pools.reflection_gate if self._pools is not None and not ours else None
        entered = False
        if ours and self._metrics is not None:
            self._metrics.rpc_started(SERVICE_NAME, access.method)
        # The domain and the upstream adapter report lease takeovers and calls to Garmin
        # to whoever listens for this RPC: this replica's metrics.
        listening = current_listener.set(self._metrics)
        answer_by = rpc_deadline.set(_deadline_of(context))
        try:
            caller = self._enter(access, context, authorization, caller, outcome, precomputed, gate)
            entered = gate is not None
            with _as_caller(caller):
                yield outcome
        # Every error must become a documented status, so catch them all here.
        except Exception as exc:
            aborted = status_name(context)
            if aborted not in (None, "OK") and not isinstance(exc, DomainError):
                # The handler aborted with a status of its own: keep it.
                outcome.reason = outcome.code = aborted
                raise
            row = row_for(exc)
            outcome.reason, outcome.code = row.reason, row.code.name
            if row is INTERNAL_ROW and not isinstance(exc, DomainError):
                log.exception("unexpected error in %s", access.method, extra={"rpc": access.method})
            context.abort_with_status(to_status(exc))
            raise  # unreachable: abort_with_status raises
        finally:
            if entered and gate is not None:
                gate.leave()
            current_listener.reset(listening)
            rpc_deadline.reset(answer_by)
            latency = time.perf_counter() - started
            if ours:
                self._count(access.method, outcome, latency)
            # Our RPCs are logged each; other services only when refused.
            if ours or outcome.code != "OK":
                rpc = access.method if ours else f"{access.service}/{access.method}"
                self._record(rpc, outcome, latency)

    def _enter(
        self,
        access: Access,
        context: grpc.ServicerContext,
        authorization: str | None,
        caller: Caller | None,
        outcome: _Outcome,
        precomputed: DomainError | None,
        gate: StreamGate | None,
    ) -> Caller | None:
        """The admitted caller (None for a public method); raises the refusal. A caller
        identified here is named on the access line even if its roles then refuse it."""
        if precomputed is not None:
            raise precomputed
        if caller is None:
            caller = self._identify(access, context, authorization)
            if caller is not None:
                outcome.caller = caller.name
                self._authorize(access, caller)
        if gate is not None and not gate.enter():
            raise TooManyStreams("too many reflection streams; retry later")
        return caller

    def _record(self, rpc: str, outcome: _Outcome, latency: float) -> None:
        self._access_log.record(rpc, outcome.caller, outcome.reason, latency)

    def _count(self, rpc: str, outcome: _Outcome, latency: float) -> None:
        if self._metrics is None:
            return
        self._metrics.rpc_handled(SERVICE_NAME, rpc, outcome.code, latency)
        response = outcome.response
        if rpc in GRANTING_RPCS and response is not None and response.HasField("lease"):
            self._metrics.lease_granted(rpc)
        if outcome.reason == LEASE_LOST:
            self._metrics.lease_lost(rpc)
