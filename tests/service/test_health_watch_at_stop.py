"""A stop ends the main port's health Watch streams once they have NOT_SERVING, so the grace
period is for the calls that finish (README, `serve`: SIGTERM sets NOT_SERVING, lets in-flight
calls finish within the grace period).

Before, a Watch stream (a gRPC client's own health checking, an Envoy sidecar) never ended
by itself: every stop with one open waited the whole GARMIN_AUTH_GRACE_PERIOD for it, and the
grace period of a replica that nobody calls was spent on a stream that had nothing more to
say."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fixtures.servers import ServiceFactory

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GRACE = 8.0


def test_a_stop_does_not_wait_out_the_grace_period_for_health_watches(
    service_factory: ServiceFactory,
) -> None:
    replica = service_factory.start(grace_period_seconds=GRACE)
    seen: list[int] = []
    ended = threading.Event()
    with grpc.insecure_channel(replica.target) as channel:
        updates = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="liveness")
        )

        def follow() -> None:
            try:
                for update in updates:
                    seen.append(int(update.status))
            except grpc.RpcError:
                pass
            ended.set()

        threading.Thread(target=follow, daemon=True).start()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == [SERVING]

        started = time.monotonic()
        replica.running.stop()
        took = time.monotonic() - started
        assert ended.wait(5), "the Watch stream did not end with the stop"

    assert took < GRACE / 2, f"the stop took {took:.1f} s for one idle Watch (grace {GRACE:g} s)"
    # The watcher was told first: it did not just lose its connection.
    assert seen == [SERVING, NOT_SERVING]
