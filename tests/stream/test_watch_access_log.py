"""A WatchSessionEvents stream its consumer cancelled is logged and counted as CANCELLED.
A watch never ends OK by itself; before, gRPC's GeneratorExit passed by the interceptor's
`except Exception` and the access line and grpc_server_handled_total said OK."""

from __future__ import annotations

import logging
import time

import pytest

from tests.fixtures.servers import Replica
from tests.stream import Follower, watch


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_a_cancelled_watch_is_not_logged_ok(
    service: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="auth_service.rpc")
    follower = Follower(watch(service.stub)).start()
    follower.wait_heartbeat()
    follower.cancel()
    deadline = time.monotonic() + 10
    lines: list[logging.LogRecord] = []
    while time.monotonic() < deadline and not lines:
        time.sleep(0.2)
        lines = [
            record
            for record in caplog.records
            if record.name == "auth_service.rpc"
            and getattr(record, "rpc", None) == "WatchSessionEvents"
        ]
    assert lines, "no access line for the cancelled watch"
    assert lines[0].outcome != "OK", lines[0].getMessage()  # type: ignore[attr-defined]
    registry = service.running.application.metrics.registry
    ok = registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "server_stream",
            "grpc_service": "garmin_auth.v1.GarminAuthService",
            "grpc_method": "WatchSessionEvents",
            "grpc_code": "OK",
        },
    )
    assert not ok, f"grpc_server_handled_total{{grpc_code='OK'}} = {ok}"
