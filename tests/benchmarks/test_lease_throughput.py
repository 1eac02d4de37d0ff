"""benchmarks/lease_throughput.py --floor-only at a tiny size, run as an operator runs it:
the service and both floor servers (benchmarks/floor_server.py) in their own processes serve
the lease load without errors, and the floor targets are printed (their verdicts depend on
the machine's load, so they are not asserted)."""

from __future__ import annotations

import os

import pytest

from tests.benchmarks.runs import run_benchmark
from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


TINY = ["--no-single-caller", "--in-flight", "2", "--users", "300"]
TINY += ["--duration", "0.5", "--warmup", "0.2"]


def run_tiny(pg_admin_url: str, *args: str) -> tuple[str, dict[str, float], set[str]]:
    """lease_throughput, tiny: its output, its figures and its target names."""
    run = run_benchmark("lease_throughput", pg_admin_url, *args, *TINY)
    return run.stdout, run.figures, set(run.targets)


def test_lease_and_floor_phases_run_side_by_side(
    pg_server: PostgresServer, pg_admin_url: str
) -> None:
    """With every server process confined to one CPU (--pin-cpus), as a replica given one
    exclusive CPU runs."""
    cpu = max(os.sched_getaffinity(0))
    stdout, figures, targets = run_tiny(pg_admin_url, "--floor-only", "--pin-cpus", str(cpu))
    assert f"every server process confined to one CPU ({cpu})" in stdout
    assert {"lease_vs_floor_n2", "lease_cpu_ms"} <= targets
    for phase in ("lease_session_n2", "floor_sync_n2", "floor_asyncio_n2"):
        assert figures[f"{phase}_rate"] > 0, stdout
        assert figures[f"{phase}_errors"] == 0, stdout
    assert figures["lease_vs_floor_sync_n2"] > 0


def test_every_phase_serves_its_load_without_errors(
    pg_server: PostgresServer, pg_admin_url: str
) -> None:
    """All phases, tiny: LeaseNextSession with and without the release it carries, and the
    direct psycopg baselines issuing the service's own statements (the release among them
    must match the lease its grant took, or the baseline measures refusals)."""
    stdout, figures, _ = run_tiny(pg_admin_url)
    phases = ("lease_next", "lease_handover", "direct_tx", "direct_autocommit")
    for phase in (f"{name}_n2" for name in phases):
        assert figures[f"{phase}_rate"] > 0, stdout
        assert figures[f"{phase}_errors"] == 0, stdout
    assert figures["lease_handover_users_vs_lease_next_n2"] > 0
