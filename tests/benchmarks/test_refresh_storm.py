"""benchmarks/refresh_storm.py at a tiny size, run as an operator runs it (its own processes:
the emulator, two service replicas, the leasing workers): it finishes and its targets hold
but for the lease latency goal, which depends on the machine's load."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

SESSIONS = 30
# Measured against the machine, not asserted: a loaded CI box may miss it.
MACHINE_BOUND_TARGETS = {"lease_p99_during_storm"}


def test_every_session_is_refreshed_exactly_once_without_reuse(
    pg_server: PostgresServer, pg_admin_url: str
) -> None:
    env = {**os.environ, "BENCH_POSTGRES_URL": pg_admin_url}
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.refresh_storm", "--sessions", str(SESSIONS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
        check=False,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    targets = {
        line.split()[1]: line.split()[-1]
        for line in run.stdout.splitlines()
        if line.startswith("target ")
    }
    assert targets.keys() >= {
        "sessions_refreshed_exactly_once",
        "refresh_token_reuses",
        "garmin_token_requests_in_flight_peak",
        "sessions_active_after",
        "sessions_still_due_after",
        "lease_errors",
    }
    failed = {name for name, verdict in targets.items() if verdict != "PASS"}
    assert failed <= MACHINE_BOUND_TARGETS, run.stdout
    assert f"figure garmin_refreshes {SESSIONS} refreshes" in run.stdout
