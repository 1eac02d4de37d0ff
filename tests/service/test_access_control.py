"""Finding 10 of issue 14: every handler kind goes through authentication and the role
table, deny by default. A test-only servicer with one method of each streaming kind is
served by a real server behind the real interceptor.

Before the fix the interceptor passed non-unary handlers through untouched: a call without
any credentials reached them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest

from auth_service.api.callers import ADMIN, RPC_ROLES, current_caller
from auth_service.config import Settings
from auth_service.domain.errors import SessionNotFound
from auth_service.server import RunningServer, build_application, start_server
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import ROLE_TOKENS, failure_of

SERVICE = "garmin_auth.v1.GarminAuthService"
Message = pb.GetStatusRequest


def _caller_name() -> str:
    caller = current_caller.get()
    return caller.name if caller is not None else "nobody"


def server_stream(request: Message, _context: grpc.ServicerContext) -> Iterator[Message]:
    for index in range(3):
        yield Message(user_id=f"{_caller_name()}:{request.user_id}:{index}")


def client_stream(requests: Iterator[Message], _context: grpc.ServicerContext) -> Message:
    return Message(user_id=f"{_caller_name()}:" + ",".join(r.user_id for r in requests))


def bidi(requests: Iterator[Message], context: grpc.ServicerContext) -> Iterator[Message]:
    for request in requests:
        if request.user_id == "missing":
            raise SessionNotFound("no session for user 'missing'")
        if request.user_id == "abort":
            # A handler may still end its stream with a status of its own.
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "consumer too slow")
        yield Message(user_id=f"{_caller_name()}:{request.user_id}")


HANDLERS = {
    "TestServerStream": grpc.unary_stream_rpc_method_handler(
        server_stream, Message.FromString, Message.SerializeToString
    ),
    "TestClientStream": grpc.stream_unary_rpc_method_handler(
        client_stream, Message.FromString, Message.SerializeToString
    ),
    "TestBidi": grpc.stream_stream_rpc_method_handler(
        bidi, Message.FromString, Message.SerializeToString
    ),
    # Served, but in no role table: nobody may call it.
    "TestUnlisted": grpc.unary_stream_rpc_method_handler(
        server_stream, Message.FromString, Message.SerializeToString
    ),
}
LISTED = ("TestServerStream", "TestClientStream", "TestBidi")


@pytest.fixture
def streaming_server(
    service_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RunningServer, grpc.Channel]]:
    for name in LISTED:
        monkeypatch.setitem(RPC_ROLES, name, frozenset({ADMIN}))
    application = build_application(replace(service_settings))
    running = start_server(
        application,
        "127.0.0.1:0",
        extra_handlers=[grpc.method_handlers_generic_handler(SERVICE, HANDLERS)],
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield running, channel
    finally:
        channel.close()
        running.stop(grace=0)


def _call(channel: grpc.Channel, method: str, role: str | None) -> list[str]:
    """Call `method` as `role` (None: no credentials); the user ids answered."""
    metadata = () if role is None else (("authorization", f"Bearer {ROLE_TOKENS[role]}"),)
    path = f"/{SERVICE}/{method}"
    kinds: dict[str, Callable[..., Any]] = {
        "TestServerStream": channel.unary_stream,
        "TestUnlisted": channel.unary_stream,
        "TestClientStream": channel.stream_unary,
        "TestBidi": channel.stream_stream,
    }
    call = kinds[method](
        path, request_serializer=Message.SerializeToString, response_deserializer=Message.FromString
    )
    requests = [Message(user_id="a"), Message(user_id="b")]
    argument: Any = (
        requests[0] if method in {"TestServerStream", "TestUnlisted"} else iter(requests)
    )
    answer = call(argument, metadata=metadata, timeout=10)
    if method == "TestClientStream":
        return [answer.user_id]
    return [message.user_id for message in answer]


def _refusal(channel: grpc.Channel, method: str, role: str | None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        _call(channel, method, role)
    failure = failure_of(raised.value)
    return failure.code, failure.reason


@pytest.mark.parametrize("method", LISTED)
def test_streaming_handlers_need_a_caller_with_the_role(
    streaming_server: tuple[RunningServer, grpc.Channel], method: str
) -> None:
    _, channel = streaming_server
    assert _refusal(channel, method, None) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLER_UNAUTHENTICATED",
    )
    assert _refusal(channel, method, "viewer") == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CALLER_FORBIDDEN",
    )
    # The admin gets through, and the handler runs as the admin.
    answers = _call(channel, method, "admin")
    assert answers
    assert all(answer.startswith("admin-caller:") for answer in answers)


@pytest.mark.parametrize("role", [None, *ROLE_TOKENS])
def test_a_method_in_no_role_table_is_refused_to_everyone(
    streaming_server: tuple[RunningServer, grpc.Channel], role: str | None
) -> None:
    _, channel = streaming_server
    code, _reason = _refusal(channel, "TestUnlisted", role)
    expected = (
        grpc.StatusCode.UNAUTHENTICATED if role is None else grpc.StatusCode.PERMISSION_DENIED
    )
    # Without credentials the method's refusal is not even revealed.
    assert code in {expected, grpc.StatusCode.PERMISSION_DENIED}


def test_a_streaming_handlers_errors_become_documented_statuses(
    streaming_server: tuple[RunningServer, grpc.Channel],
) -> None:
    _, channel = streaming_server
    call = channel.stream_stream(
        f"/{SERVICE}/TestBidi",
        request_serializer=Message.SerializeToString,
        response_deserializer=Message.FromString,
    )
    admin = (("authorization", f"Bearer {ROLE_TOKENS['admin']}"),)
    answers: Iterator[Message] = iter(
        call(iter([Message(user_id="a"), Message(user_id="missing")]), metadata=admin)
    )
    assert next(answers).user_id == "admin-caller:a"
    with pytest.raises(grpc.RpcError) as raised:
        next(answers)
    failure = failure_of(raised.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    aborting = call(iter([Message(user_id="abort")]), metadata=admin, timeout=10)
    with pytest.raises(grpc.RpcError) as aborted:
        list(aborting)
    assert (aborted.value.code(), aborted.value.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "consumer too slow",
    )
    # Bytes that are not a message of the method's type: INVALID_ARGUMENT, never INTERNAL.
    raw = channel.stream_stream(
        f"/{SERVICE}/TestBidi", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as garbled:
        list(raw(iter([b"\xff\xff\xff"]), metadata=admin, timeout=10))
    assert failure_of(garbled.value).reason == "INVALID_ARGUMENT"
