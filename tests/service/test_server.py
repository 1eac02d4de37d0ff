"""The server as operators and other services meet it: credentials, roles, health, reflection."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from auth_service.api.callers import RPC_ROLES, token_sha256
from auth_service.api.reflection import _v1_message_classes
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
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


def test_health_is_serving_for_both_names(service: Replica) -> None:
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "garmin_auth.v1.GarminAuthService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_health_goes_not_serving_on_graceful_stop(service_factory: ServiceFactory) -> None:
    replica = service_factory.start()
    health = health_pb2_grpc.HealthStub(replica.channel)
    replica.running.health.enter_graceful_shutdown()
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


def _listed_services(channel: grpc.Channel, version: str) -> set[str]:
    if version == "v1alpha":
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = stub.ServerReflectionInfo(iter([request]), timeout=5)
        return {s.name for a in answers for s in a.list_services_response.service}
    request_cls, response_cls = _v1_message_classes()
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )
    answers = call(iter([request_cls(list_services="")]), timeout=5)
    return {s.name for a in answers for s in a.list_services_response.service}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_both_protocol_versions(service: Replica, version: str) -> None:
    names = _listed_services(service.channel, version)
    assert "garmin_auth.v1.GarminAuthService" in names
    assert "grpc.health.v1.Health" in names


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
