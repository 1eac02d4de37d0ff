"""benchmarks/refresh_storm.py at a tiny size, run as an operator runs it (its own processes:
the emulator, two service replicas, the leasing workers): it finishes and its targets hold
but for the lease latency goal, which depends on the machine's load."""

from __future__ import annotations

import pytest

from tests.benchmarks.runs import run_benchmark
from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

SESSIONS = 30
# Measured against the machine, not asserted: a loaded CI box may miss it.
MACHINE_BOUND_TARGETS = {"lease_p99_during_storm"}


def test_every_session_is_refreshed_exactly_once_without_reuse(
    pg_server: PostgresServer, pg_admin_url: str
) -> None:
    run = run_benchmark("refresh_storm", pg_admin_url, "--sessions", str(SESSIONS), timeout=150)

    targets = run.targets
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
