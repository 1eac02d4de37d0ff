"""benchmarks/soak.py for a few seconds, run as an operator runs it: two replicas and two
worker processes lease, report, renew, release and abandon leases while the checker reads the
table, and every correctness target holds (they count violations, lost data and errors, so
unlike the speed targets their verdicts do not depend on the machine's load)."""

from __future__ import annotations

import pytest

from tests.benchmarks.runs import run_benchmark
from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

CORRECTNESS = (
    "invariant_violations",
    "data_lost",
    "internal_errors",
    "unexpected_answers",
    "replica_restarts",
)


def test_a_short_soak_keeps_every_invariant(pg_server: PostgresServer, pg_admin_url: str) -> None:
    run = run_benchmark("soak", pg_admin_url, "--minutes", "0.1", "--workers", "2", "--users", "20")

    assert {name: run.targets.get(name) for name in CORRECTNESS} == dict.fromkeys(
        CORRECTNESS, "PASS"
    ), run.stdout
    assert run.figures["grants_answered"] > 0, run.stdout
    assert run.figures["invariant_checks"] > 0, run.stdout
