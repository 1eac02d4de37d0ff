"""Finding 1 of issue 14, as an attacker tried it: idle reflection streams (and unary calls
that send their headers but never their message) opened without credentials over real
sockets must not keep health checks (on the health listener and on the main port) or an
authenticated caller from being answered within a second.

Before the fix 40 such streams took all 32 server threads, and health timed out."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.fixtures.servers import ROLE_TOKENS, failure_of
from tests.service.test_cli import CLI, base_env, free_port, run_cli

CONNECTIONS = 8
STREAMS_PER_CONNECTION = 6  # 48 idle reflection streams and 48 idle unary calls in all
SERVICE = "garmin_auth.v1.GarminAuthService"
ANSWER_WITHIN_SECONDS = 1.0


@pytest.fixture
def server_process(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """`serve` in its own process: (main target, health target)."""
    target, health = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = base_env(
        tmp_path,
        GARMIN_AUTH_LISTEN=target,
        GARMIN_AUTH_HEALTH_LISTEN=health,
        GARMIN_AUTH_REFLECTION=request.param,
        GARMIN_AUTH_GRACE_PERIOD="0",
    )
    assert run_cli("migrate", env=env).returncode == 0
    process = subprocess.Popen(
        [CLI, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield target, health
    finally:
        process.kill()
        process.wait(timeout=10)


def _idle_requests(release: threading.Event) -> Iterator[reflection_pb2.ServerReflectionRequest]:
    """A request stream that sends nothing until `release` is set."""
    release.wait()
    yield from ()


@pytest.mark.parametrize("server_process", ["authenticated", "open"], indirect=True)
def test_idle_anonymous_streams_do_not_stall_health_or_callers(
    server_process: tuple[str, str],
) -> None:
    target, health_target = server_process
    release = threading.Event()
    channels = [
        # A subchannel pool per channel: one TCP connection each.
        grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CONNECTIONS)
    ]
    streams: list[grpc.Future] = []
    try:
        for channel in channels:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            streams.extend(
                stub.ServerReflectionInfo(_idle_requests(release))
                for _ in range(STREAMS_PER_CONNECTION)
            )
            # A unary RPC's headers without its request message: gRPC would read the
            # message on a server thread before any handler runs.
            headers_only = channel.stream_unary(
                f"/{SERVICE}/GetStatus", request_serializer=None, response_deserializer=None
            )
            streams.extend(
                headers_only.future(_idle_requests(release)) for _ in range(STREAMS_PER_CONNECTION)
            )
        time.sleep(1.0)  # the server has them all by now

        for where in (health_target, target):
            with grpc.insecure_channel(where) as channel:
                started = time.monotonic()
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="liveness"),
                    timeout=ANSWER_WITHIN_SECONDS,
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                assert time.monotonic() - started < ANSWER_WITHIN_SECONDS
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GarminAuthServiceStub(channel)
            admin = (("authorization", f"Bearer {ROLE_TOKENS['admin']}"),)
            started = time.monotonic()
            stub.ListSessions(pb.ListSessionsRequest(), metadata=admin, timeout=1.0)
            stub.GetStatus(pb.GetStatusRequest(user_id="u"), metadata=admin, timeout=1.0)
            assert time.monotonic() - started < 2 * ANSWER_WITHIN_SECONDS

        refused = [_refusal(stream) for stream in streams if stream.done()]
        # Without credentials every stream is refused at once; open reflection admits a few
        # and refuses the rest as too many.
        assert len(refused) >= len(streams) - 8
        assert set(refused) <= {"CALLER_UNAUTHENTICATED", "TOO_MANY_STREAMS"}
    finally:
        release.set()
        for stream in streams:
            stream.cancel()
        for channel in channels:
            channel.close()


def _refusal(call: grpc.Future) -> str:
    try:
        call.result()
    except grpc.RpcError as error:
        return failure_of(error).reason
    return "OK"
