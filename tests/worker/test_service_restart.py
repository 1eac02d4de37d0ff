"""The auth service restarts mid-run (a rolling update: the same address is back within a
second): the worker's retries get through. Before, every retry fell inside gRPC's reconnect
backoff (about 1 s after a refused connection, during which a call fails at once without
touching the network) and the whole retry window was at most 1.4 s: the run exited 3 with
the user in flight FAILED and left leased until its ttl."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from auth_service.server import build_application, start_server
from garmin_emulator import GarminEmulator
from sync_worker.client import AuthClientConfig
from sync_worker.directory_sink import DirectorySink
from tests.fixtures.servers import ServiceFactory
from tests.worker import RecordingSink, connect, make_config, run_worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.mark.parametrize("down_seconds", [0.3])
def test_a_short_restart_of_the_service_does_not_end_the_run(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    tmp_path: Path,
    down_seconds: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's retries of an UNAVAILABLE call sleep uniform(0, 0.2 * 2**n) (at most
    1.4 s in all, 0.7 s on average), but after one refused connection gRPC's channel does not
    try to connect again for about 1 s (its reconnect backoff): every retry in that window fails
    at once without reaching the network. Jitter pinned to its mean so the run is
    deterministic (with real jitter this failed 2 runs of 3)."""
    monkeypatch.setattr(random, "uniform", lambda low, high: (low + high) / 2)
    replica = service_factory.start()
    port = replica.running.port
    connect(replica, garmin, "gus", activities=3)
    connect(replica, garmin, "hal", activities=3)
    sink = RecordingSink(DirectorySink(tmp_path))
    restarted: list[object] = []
    back = threading.Event()
    times: dict[str, float] = {}

    def restart(_event: object) -> None:
        if restarted:
            return
        restarted.append(True)
        application = build_application(service_factory.base_settings)
        replica.stop()
        times["down"] = time.monotonic()

        def come_back() -> None:
            time.sleep(down_seconds)
            restarted.append(start_server(application, f"127.0.0.1:{port}"))
            times["back"] = time.monotonic()
            back.set()

        threading.Thread(target=come_back, daemon=True).start()

    sink.after_write = restart
    config = make_config(
        replica.target, garmin, tmp_path, users=("gus", "hal"), concurrency=1, page_size=1
    )
    # The worker's own retry policy (AuthClientConfig's defaults), not the suite's faster one.
    defaults = AuthClientConfig(target=replica.target, token=config.auth.token)
    config = replace(
        config,
        auth=replace(
            config.auth,
            attempts=defaults.attempts,
            backoff_initial_seconds=defaults.backoff_initial_seconds,
            backoff_max_seconds=defaults.backoff_max_seconds,
        ),
    )
    try:
        result = run_worker(config, sink=sink)
        times["gave up"] = time.monotonic()
    finally:
        assert back.wait(10)
        for running in restarted[1:]:
            running.stop(grace=0)  # type: ignore[attr-defined]

    down_for = times["back"] - times["down"]
    retried_for = times["gave up"] - times["down"]
    assert result.exit_code == 0, (
        f"exit {result.exit_code}: the service was down {down_for:.2f} s, the worker gave up "
        f"{retried_for:.2f} s after it went down ({result.report.fatal}); lines={result.lines}"
    )
    assert result.outcome("gus") == "SYNCED"
    assert result.outcome("hal") == "SYNCED"
