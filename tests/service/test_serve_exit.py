"""After SIGTERM, `serve` exits once the grace period is over, even while a handler still
runs (README "Commands": SIGTERM "lets in-flight calls finish within the grace period, then
exits"). Before, the interpreter waited at exit for the RPC pool's threads: a Garmin call
of 8 s held the exit 8 s with a 1 s grace, past the pod's termination grace in production."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.fixtures.emulators import scanned_emulator
from tests.fixtures.servers import CONSUMER_KEY, CONSUMER_SECRET, ROLE_TOKENS
from tests.service.test_cli import CLI, base_env, free_port, run_cli

GRACE = 1.0
GARMIN_DELAY = 8.0


def test_a_call_longer_than_the_grace_does_not_hold_the_exit(tmp_path: Path) -> None:
    with scanned_emulator(consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET) as garmin:
        target = f"127.0.0.1:{free_port()}"
        env = base_env(
            tmp_path,
            GARMIN_AUTH_LISTEN=target,
            GARMIN_AUTH_UPSTREAM_URL=garmin.url,
            GARMIN_AUTH_GRACE_PERIOD=str(GRACE),
        )
        assert run_cli("migrate", env=env).returncode == 0
        process = subprocess.Popen(
            [CLI, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                health = health_pb2_grpc.HealthStub(channel)
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
                garmin.add_user("slow@example.com", "pw")
                # Garmin's sign-in answers after 8 s (within the 10 s upstream timeout).
                garmin.fail_next("/mobile/api/login", None, delay=GARMIN_DELAY)
                stub = pb_grpc.GarminAuthServiceStub(channel)
                in_flight = stub.Login.future(
                    pb.LoginRequest(user_id="slow", email="slow@example.com", password="pw"),
                    metadata=(("authorization", f"Bearer {ROLE_TOKENS['admin']}"),),
                    timeout=30,
                )
                time.sleep(0.5)
                signalled = time.monotonic()
                process.send_signal(signal.SIGTERM)
                code = process.wait(timeout=30)
                took = time.monotonic() - signalled
                in_flight.cancel()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
    assert code == 0
    # The grace (1 s) and a few seconds to stop the background work; not the call's 8 s.
    assert took < GRACE + 3.0, f"serve exited {took:.1f} s after SIGTERM (grace {GRACE:g} s)"
