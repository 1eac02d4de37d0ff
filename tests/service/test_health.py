"""Health as probes see it (issue 14, findings 1 and 3): the health-only listener, and
liveness that never follows the database while readiness does."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.config import Settings
from auth_service.server import RunningServer, build_application, start_server
from auth_service.serving_config import ServingSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import ROLE_TOKENS, Replica, ServiceFactory, failure_of

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WITH_LISTENER = ServingSettings(health_listen="127.0.0.1:0")


def status(target: str, name: str) -> int:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=5
        )
    return int(answer.status)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def without_database(service_settings: Settings) -> Iterator[RunningServer]:
    """A replica whose PostgreSQL does not answer (nothing listens on its port)."""
    settings = replace(
        service_settings,
        database_url=f"postgresql+psycopg://garmin@127.0.0.1:{closed_port()}/garmin",
        serving=WITH_LISTENER,
    )
    running = start_server(build_application(settings), "127.0.0.1:0")
    try:
        yield running
    finally:
        running.stop(grace=0)


def test_liveness_stays_serving_while_the_database_is_down(
    without_database: RunningServer,
) -> None:
    """Finding 3: before the fix the overall status ("" — what liveness read) followed the
    database, so an outage restarted every replica."""
    assert without_database.health_port is not None
    for target in (
        f"127.0.0.1:{without_database.health_port}",
        f"127.0.0.1:{without_database.port}",
    ):
        assert status(target, "") == SERVING
        assert status(target, "liveness") == SERVING
        assert status(target, "readiness") == NOT_SERVING
        assert status(target, "garmin_auth.v1.GarminAuthService") == NOT_SERVING


def test_the_health_listener_serves_only_health(service_factory: ServiceFactory) -> None:
    replica = service_factory.start(serving=WITH_LISTENER)
    port = replica.running.health_port
    assert port is not None
    assert port != replica.running.port
    target = f"127.0.0.1:{port}"
    for name in ("", "liveness", "readiness", "garmin_auth.v1.GarminAuthService"):
        assert status(target, name) == SERVING
    with grpc.insecure_channel(target) as channel:
        stub = type(replica.stub)(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetStatus(
                pb.GetStatusRequest(user_id="u"),
                metadata=(("authorization", f"Bearer {ROLE_TOKENS['admin']}"),),
                timeout=5,
            )
        assert failure_of(raised.value).code == grpc.StatusCode.UNIMPLEMENTED


def test_graceful_stop_turns_the_health_listener_not_serving(
    service_factory: ServiceFactory,
) -> None:
    replica = service_factory.start(serving=WITH_LISTENER)
    target = f"127.0.0.1:{replica.running.health_port}"
    replica.running.health.enter_graceful_shutdown()
    assert status(target, "liveness") == NOT_SERVING
    assert status(target, "readiness") == NOT_SERVING


def test_health_answers_on_the_main_port_without_credentials(service: Replica) -> None:
    assert status(service.target, "liveness") == SERVING


def test_watch_answers_on_both_ports(service_factory: ServiceFactory) -> None:
    replica = service_factory.start(serving=WITH_LISTENER)
    for target in (replica.target, f"127.0.0.1:{replica.running.health_port}"):
        with grpc.insecure_channel(target) as channel:
            updates = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=5
            )
            assert next(iter(updates)).status == SERVING
            updates.cancel()
