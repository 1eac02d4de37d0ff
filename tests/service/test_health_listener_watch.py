"""The health-only listener's Check and Watch, registered with a tolerant deserializer
(27fda0b): a valid Watch follows readiness, a malformed one is
INVALID_ARGUMENT, an unknown service NOT_FOUND. Guards from the review of that change."""

from __future__ import annotations

import queue
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.serving_config import ServingSettings
from tests.fixtures.servers import ServiceFactory, failure_of

WITH_LISTENER = ServingSettings(health_listen="127.0.0.1:0")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def backend() -> str:
    """The database plays no part: SQLite alone."""
    return "sqlite"


@pytest.mark.parametrize("payload", [b"\x0a\x02\xff\xfe", b"\xff\xff\xff"], ids=["utf8", "garbage"])
def test_a_malformed_watch_on_the_listener_is_invalid_argument(
    service_factory: ServiceFactory, payload: bytes
) -> None:
    replica = service_factory.start(serving=WITH_LISTENER)
    target = f"127.0.0.1:{replica.running.health_port}"
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_stream(
            "/grpc.health.v1.Health/Watch", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as raised:
            list(call(payload, timeout=10))
    failure = failure_of(raised.value)
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT, (failure.code, failure.message)


def test_unknown_service_check_on_the_listener_is_not_found(
    service_factory: ServiceFactory,
) -> None:
    replica = service_factory.start(serving=WITH_LISTENER)
    target = f"127.0.0.1:{replica.running.health_port}"
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as raised:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="nope"), timeout=5
        )
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_watch_on_the_listener_follows_readiness(
    service_factory: ServiceFactory,
) -> None:
    replica = service_factory.start(serving=WITH_LISTENER)
    target = f"127.0.0.1:{replica.running.health_port}"
    channel = grpc.insecure_channel(target)
    updates = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="readiness"), timeout=30
    )
    seen: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            for update in updates:
                seen.put(update.status)
        except grpc.RpcError as error:
            seen.put(error.code())

    threading.Thread(target=read, daemon=True).start()
    assert seen.get(timeout=10) == SERVING
    replica.running.health.set_ready(False)
    assert seen.get(timeout=10) == NOT_SERVING
    replica.running.health.set_ready(True)
    assert seen.get(timeout=10) == SERVING
    updates.cancel()
    channel.close()
