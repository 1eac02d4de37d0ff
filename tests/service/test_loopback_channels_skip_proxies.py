"""The service's own commands dial this machine directly, whatever proxy the environment names.

gRPC routes even a loopback target through http_proxy, https_proxy or grpc_proxy (the
worker's channel turns that off, sync_worker/client.py). Before, two channels did not:

- `health-check` (the image's HEALTHCHECK) asked a proxy that was not there: a serving
  listener was reported down, "liveness: no answer from 127.0.0.1:PORT (UNAVAILABLE)", exit 1
  (3 failures, one per variable).
- `demo` sent its Login, with the admin token and the demo account's password, in clear to
  the proxy's host: "demo: sign-in failed: UNAVAILABLE ... ipv4:127.0.0.1:9" (1 failure).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from auth_service.health import HealthListener
from auth_service.operator_commands import health_check
from tests.service.test_cli import CLI, free_port

# The discard port: a proxy that is not there.
ABSENT_PROXY = "http://127.0.0.1:9"


@pytest.mark.parametrize("proxy_variable", ["http_proxy", "https_proxy", "grpc_proxy"])
def test_health_check_asks_the_local_listener_even_with_a_proxy_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, proxy_variable: str
) -> None:
    port = free_port()
    listener = HealthListener(f"127.0.0.1:{port}").start()
    try:
        env = {"GARMIN_AUTH_HEALTH_LISTEN": f"127.0.0.1:{port}"}
        assert health_check("liveness", env) == (True, "liveness: SERVING")
        monkeypatch.setenv(proxy_variable, ABSENT_PROXY)
        assert health_check("liveness", env) == (True, "liveness: SERVING")
    finally:
        listener.stop(0)


def test_demo_signs_its_user_in_over_loopback_whatever_proxy_grpc_is_told(tmp_path: Path) -> None:
    # grpc_proxy is read by gRPC alone: the worker's Connect API calls (requests) and its own
    # channel (no proxy) are unaffected, so only the demo's channel could fail here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}
    env.update(grpc_proxy=ABSENT_PROXY, GARMIN_AUTH_LISTEN=f"127.0.0.1:{free_port()}")
    result = subprocess.run(
        [CLI, "demo", "--once", "--folder", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert "SubmitMfa -> SESSION_STATE_ACTIVE" in result.stdout, result.stdout[-800:]
    assert result.returncode == 0, result.stderr[-800:]
