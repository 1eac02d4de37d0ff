"""Bad input never answers INTERNAL (README, Errors). Request bytes that are not a well-formed
message answer INVALID_ARGUMENT on health and server reflection too, as on our own RPCs
(auth_service.api.decoding).

Before: both kept gRPC's own deserializer. An anonymous client sending a malformed
HealthCheckRequest on the main port got INTERNAL ("Exception deserializing request!"), and
grpc._common logged "Exception deserializing message!" at ERROR with a traceback for each
such call; server reflection (any authenticated caller) did the same. (From a read-only
review of bad input.)

Review of the first version found that wrapping health's Watch dropped its non-blocking
mark: each idle Watch stream then held one of the health pool's threads, and
HEALTH_THREADS anonymous watchers starved every health Check on the main port (a
Kubernetes probe fails, the replica is restarted). And the health-only listener
(GARMIN_AUTH_HEALTH_LISTEN, an asyncio server of its own) still answered gRPC's own UNKNOWN
with an ERROR traceback for each malformed request."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.connection_limits import HEALTH_THREADS
from auth_service.serving_config import ServingSettings
from tests.fixtures.servers import ROLE_TOKENS, Replica, ServiceFactory, failure_of

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Field 1 (service, a string) holding bytes that are not UTF-8; and plain garbage.
MALFORMED = [b"\x0a\x02\xff\xfe", b"\xff\xff\xff"]


@pytest.mark.parametrize("payload", MALFORMED, ids=["invalid-utf8", "garbage"])
def test_a_malformed_health_check_is_not_answered_internal(
    service: Replica, payload: bytes
) -> None:
    call = service.channel.unary_unary(  # raw bytes, no credentials (health is public)
        HEALTH_CHECK, request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as raised:
        call(payload, timeout=10)
    failure = failure_of(raised.value)
    assert failure.code is not grpc.StatusCode.INTERNAL, (failure.code, failure.message)
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT, (failure.code, failure.message)


REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def test_a_malformed_reflection_request_is_not_answered_internal(service: Replica) -> None:
    """The same for server reflection (an authenticated caller of any role)."""
    call = service.channel.stream_stream(
        REFLECTION, request_serializer=None, response_deserializer=None
    )
    metadata = (("authorization", f"Bearer {ROLE_TOKENS['viewer']}"),)
    with pytest.raises(grpc.RpcError) as raised:
        list(call(iter([MALFORMED[0]]), metadata=metadata, timeout=10))
    failure = failure_of(raised.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")


HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


def test_a_malformed_health_watch_is_invalid_argument(service: Replica) -> None:
    call = service.channel.unary_stream(
        HEALTH_WATCH, request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(call(MALFORMED[0], timeout=10))
    failure = failure_of(raised.value)
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT, (failure.code, failure.message)


SERVING = health_pb2.HealthCheckResponse.SERVING


def test_idle_watch_streams_do_not_starve_health_checks(service: Replica) -> None:
    channels = [grpc.insecure_channel(service.target) for _ in range(HEALTH_THREADS)]
    watches = []
    try:
        for channel in channels:
            updates = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=60
            )
            assert next(iter(updates)).status == SERVING
            watches.append(updates)
        # The watchers sit idle; an anonymous probe on the main port must still be answered.
        with grpc.insecure_channel(service.target) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="liveness"), timeout=5
                )
            except grpc.RpcError as failed:
                raise AssertionError(
                    f"health Check starved by {HEALTH_THREADS} idle Watch streams: {failed.code()}"
                ) from None
        assert answer.status == SERVING
    finally:
        for updates in watches:
            updates.cancel()
        for channel in channels:
            channel.close()


@pytest.mark.parametrize("payload", MALFORMED, ids=["invalid-utf8", "garbage"])
def test_a_malformed_health_check_on_the_health_listener_is_invalid_argument(
    service_factory: ServiceFactory, payload: bytes
) -> None:
    replica = service_factory.start(serving=ServingSettings(health_listen="127.0.0.1:0"))
    target = f"127.0.0.1:{replica.running.health_port}"
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as raised:
            call(payload, timeout=10)
    failure = failure_of(raised.value)
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT, (failure.code, failure.message)
