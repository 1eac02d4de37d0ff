"""After SIGTERM, `serve` exits once the grace period is over, even while a handler still
runs a Garmin call that issues no session (README "Commands": SIGTERM "lets in-flight calls
finish within the grace period, waits for any session Garmin is still issuing to be stored,
then exits"). Before, the interpreter waited at exit for the RPC pool's threads: a Garmin
call of 8 s held the exit 8 s with a 1 s grace, past the pod's termination grace in
production. (A call that issues a session is waited for:
tests/refresh/test_stop_waits_for_issued_sessions.py.)"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_emulator.endpoints import PROFILE_PATH
from tests.fixtures.di_upstream import di_tokens
from tests.fixtures.servers import ROLE_TOKENS
from tests.leases import seed_active
from tests.refresh.test_stop_waits_for_issued_sessions import GARMIN_DELAY, GRACE, stack
from tests.service.test_cli import CLI


def test_a_call_longer_than_the_grace_does_not_hold_the_exit(tmp_path: Path) -> None:
    with stack(tmp_path) as s:
        s.garmin.add_user("slow@example.com", "pw")
        tokens = di_tokens(s.garmin.issue_di_tokens("slow@example.com"))
        seed_active(s.db, s.box, "slow", tokens, datetime.now(UTC))
        process = subprocess.Popen(
            [CLI, "serve"], env=s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            with grpc.insecure_channel(s.target) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                health = health_pb2_grpc.HealthStub(channel)
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
                # Garmin's API answers the validation after 8 s (within the 10 s timeout).
                before = s.garmin.request_count(PROFILE_PATH)
                s.garmin.fail_next(PROFILE_PATH, None, delay=GARMIN_DELAY)
                stub = pb_grpc.GarminAuthServiceStub(channel)
                in_flight = stub.GetStatus.future(
                    pb.GetStatusRequest(user_id="slow", validate=True),
                    metadata=(("authorization", f"Bearer {ROLE_TOKENS['admin']}"),),
                    timeout=30,
                )
                deadline = time.monotonic() + 10
                while s.garmin.request_count(PROFILE_PATH) == before:
                    assert time.monotonic() < deadline, "the validation never reached Garmin"
                    time.sleep(0.01)
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
