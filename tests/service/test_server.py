"""The server as operators and other services meet it: credentials, roles, health, reflection."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from auth_service import connection_limits
from auth_service.api.callers import RPC_ROLES, token_sha256
from auth_service.api.reflection import _v1_message_classes
from auth_service.serving_config import ReflectionMode, ServingSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import (
    ROLE_TOKENS,
    Replica,
    RpcFailure,
    ServiceFactory,
    expect_failure,
    failure_of,
    write_callers_file,
)
from tests.service.test_status_import_delete import garmin_tokens, import_tokens


def test_call_without_token_is_unauthenticated(service: Replica) -> None:
    failure = expect_failure(
        lambda: service.call("GetStatus", pb.GetStatusRequest(user_id="u"), role=None)
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLER_UNAUTHENTICATED",
    )


def test_wrong_token_is_unauthenticated(service: Replica) -> None:
    failure = expect_failure(
        lambda: service.stub.GetStatus(
            pb.GetStatusRequest(user_id="u"),
            metadata=(("authorization", "Bearer not-a-known-token"),),
            timeout=5,
        )
    )
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("rpc", sorted(RPC_ROLES))
@pytest.mark.parametrize("role", ["admin", "worker", "viewer"])
def test_role_matrix(service: Replica, rpc: str, role: str) -> None:
    """Every RPC x every role: allowed roles get past authorisation, the others are refused."""
    request = getattr(pb, f"{rpc}Request")()
    try:
        service.call(rpc, request, role=role)
        outcome = "OK"
    except grpc.RpcError as error:
        outcome = error.code().name
    if role in RPC_ROLES[rpc]:
        # An empty request is invalid, but it was let in.
        assert outcome in {"OK", "INVALID_ARGUMENT"}
    else:
        assert outcome == "PERMISSION_DENIED"


def test_viewer_calling_an_admin_rpc_is_forbidden(service: Replica) -> None:
    failure = expect_failure(
        lambda: service.call(
            "Login", pb.LoginRequest(user_id="u", email="a@b.c", password="p"), role="viewer"
        )
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")


def test_revoked_token_stops_working_without_restart(service: Replica, tmp_path: Path) -> None:
    callers = service.running.application.settings.callers_file
    assert callers is not None
    service.call("GetStatus", pb.GetStatusRequest(user_id="u"), role="viewer")
    text = callers.read_text()
    kept = [block for block in text.split("\n\n") if "viewer-caller" not in block]
    callers.write_text("\n\n".join(kept))
    future = time.time() + 5
    os.utime(callers, (future, future))
    deadline = time.monotonic() + 10
    refused: grpc.StatusCode | None = None
    while refused is None and time.monotonic() < deadline:
        try:
            service.call("GetStatus", pb.GetStatusRequest(user_id="u"), role="viewer")
            time.sleep(0.2)
        except grpc.RpcError as error:
            refused = error.code()
    assert refused == grpc.StatusCode.UNAUTHENTICATED
    service.call("GetStatus", pb.GetStatusRequest(user_id="u"), role="admin")


def test_invalid_fields_answer_every_violation(service: Replica) -> None:
    failure = expect_failure(
        lambda: service.call("Login", pb.LoginRequest(user_id="", email="nope", password=""))
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.field_violations == ["user_id", "email", "password"]
    code = expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id="x" * 40, code="12ab")
        )
    )
    assert code.field_violations == ["code"]


def test_health_is_serving_for_every_name(service: Replica) -> None:
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "liveness", "readiness", "garmin_auth.v1.GarminAuthService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_health_goes_not_serving_on_graceful_stop(service_factory: ServiceFactory) -> None:
    replica = service_factory.start()
    health = health_pb2_grpc.HealthStub(replica.channel)
    replica.running.health.enter_graceful_shutdown()
    for name in ("", "liveness", "readiness"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


def _listed_services(channel: grpc.Channel, version: str, role: str | None = "viewer") -> set[str]:
    metadata = () if role is None else (("authorization", f"Bearer {ROLE_TOKENS[role]}"),)
    if version == "v1alpha":
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = stub.ServerReflectionInfo(iter([request]), timeout=5, metadata=metadata)
        return {s.name for a in answers for s in a.list_services_response.service}
    request_cls, response_cls = _v1_message_classes()
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )
    answers = call(iter([request_cls(list_services="")]), timeout=5, metadata=metadata)
    return {s.name for a in answers for s in a.list_services_response.service}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_both_protocol_versions(service: Replica, version: str) -> None:
    names = _listed_services(service.channel, version)
    assert "garmin_auth.v1.GarminAuthService" in names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_needs_a_caller_unless_open(
    service_factory: ServiceFactory, version: str
) -> None:
    guarded = service_factory.start()
    with pytest.raises(grpc.RpcError) as refused:
        _listed_services(guarded.channel, version, role=None)
    assert failure_of(refused.value).reason == "CALLER_UNAUTHENTICATED"
    for role in ROLE_TOKENS:  # any role will do
        assert "grpc.health.v1.Health" in _listed_services(guarded.channel, version, role)
    opened = service_factory.start(serving=ServingSettings(reflection=ReflectionMode.OPEN))
    assert "grpc.health.v1.Health" in _listed_services(opened.channel, version, role=None)
    off = service_factory.start(serving=ServingSettings(reflection=ReflectionMode.OFF))
    with pytest.raises(grpc.RpcError) as missing:
        _listed_services(off.channel, version)
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_an_idle_reflection_stream_gives_its_slot_back(
    service_factory: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 1: open reflection is capped at a few streams; one kept open without requests
    is cancelled after the idle limit, while a stream that keeps asking lives on."""
    monkeypatch.setattr(connection_limits, "REFLECTION_IDLE_SECONDS", 1.0)
    replica = service_factory.start(serving=ServingSettings(reflection=ReflectionMode.OPEN))
    stub = reflection_pb2_grpc.ServerReflectionStub(replica.channel)
    release = threading.Event()

    def idle() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        release.wait(10)
        yield from ()

    def busy() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        for _ in range(6):  # 3 s in all, each request within the limit
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            time.sleep(0.5)

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as cancelled:
        list(stub.ServerReflectionInfo(idle(), timeout=10))
    release.set()
    assert cancelled.value.code() == grpc.StatusCode.CANCELLED
    assert time.monotonic() - started < 5
    assert len(list(stub.ServerReflectionInfo(busy(), timeout=10))) == 6


BOTCHED_CALLERS_FILES = {
    "bad TOML": b"[[callers]\nname = 'broken",
    # An editor saving in Latin-1: UnicodeDecodeError, which once escaped the reload and
    # left the old entries (and a revoked token) in force.
    "not UTF-8": b"# caf\xe9\n[[callers]]\nname = 'viewer'\n",
    # tomllib recurses into nested arrays: RecursionError, which escaped the same way.
    "nested too deeply": b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n",
}


@pytest.mark.parametrize("botched", BOTCHED_CALLERS_FILES.values(), ids=BOTCHED_CALLERS_FILES)
def test_a_botched_callers_file_refuses_every_caller_until_fixed(
    service: Replica, botched: bytes
) -> None:
    """Finding 8: a reload that cannot parse must not keep the old entries (a revoked token
    would keep working); every caller is refused until the file is fixed."""
    callers = service.running.application.settings.callers_file
    assert callers is not None
    status = pb.GetStatusRequest(user_id="u")
    service.call("GetStatus", status, role="viewer")  # A works
    _rewrite(callers, botched)
    refused = _wait_for_refusal(service, "viewer")
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLERS_FILE_INVALID",
    )
    assert failure_of_call(service, "admin").reason == "CALLERS_FILE_INVALID"
    registry = service.running.application.metrics.registry
    assert registry.get_sample_value("garmin_auth_callers_file_invalid") == 1
    # Fixed, without the viewer: the viewer stays refused, the admin is back.
    write_callers_file(callers, {"admin": ROLE_TOKENS["admin"]})
    _touch_later(callers, 10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            service.call("GetStatus", status, role="admin")
            break
        except grpc.RpcError:
            time.sleep(0.2)
    service.call("GetStatus", status, role="admin")
    assert failure_of_call(service, "viewer").reason == "CALLER_UNAUTHENTICATED"
    assert registry.get_sample_value("garmin_auth_callers_file_invalid") == 0


def _rewrite(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    _touch_later(path, 5)


def _touch_later(path: Path, seconds: float) -> None:
    future = time.time() + seconds
    os.utime(path, (future, future))


def failure_of_call(service: Replica, role: str) -> RpcFailure:
    return expect_failure(
        lambda: service.call("GetStatus", pb.GetStatusRequest(user_id="u"), role=role)
    )


def _wait_for_refusal(service: Replica, role: str) -> RpcFailure:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            service.call("GetStatus", pb.GetStatusRequest(user_id="u"), role=role)
        except grpc.RpcError as error:
            return failure_of(error)
        time.sleep(0.2)
    raise AssertionError(f"{role} was never refused")


def test_callers_file_holds_only_hashes(service: Replica) -> None:
    callers = service.running.application.settings.callers_file
    assert callers is not None
    text = callers.read_text()
    assert "admin-token" not in text
    assert token_sha256("admin-token-0123456789abcdef") in text


def test_lease_ids_reach_only_their_holder(service: Replica, garmin: GarminEmulator) -> None:
    """A lease id is the holder's key: status readers see who holds a lease, not its id."""
    import_tokens(service, "lee", garmin_tokens(service, garmin, "lee@example.com"))
    granted = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="lee", holder="w-1"), role="worker"
    )
    assert granted.lease.lease_id
    assert granted.status.lease.lease_id == granted.lease.lease_id
    for role in ("admin", "worker", "viewer"):
        status = service.call("GetStatus", pb.GetStatusRequest(user_id="lee"), role=role).status
        assert status.lease.holder == "w-1"
        assert status.lease.fencing_token == granted.lease.fencing_token
        assert status.lease.lease_id == ""
    listed = service.call("ListSessions", pb.ListSessionsRequest(), role="viewer").sessions
    assert [s.lease.lease_id for s in listed if s.user_id == "lee"] == [""]
