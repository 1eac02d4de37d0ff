"""benchmarks/statement_costs.py at a tiny size, run as an operator runs it: every variant
(the ORM, Core, driver and psycopg paths, and the service's own path with and without the
audit trail) grants and releases leases without a refusal and prints its costs."""

from __future__ import annotations

import pytest

from tests.benchmarks.runs import run_benchmark
from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

VARIANTS = (
    "orm_tx_preping",
    "orm_tx",
    "orm_autocommit",
    "core_tx",
    "core_autocommit",
    "driver_sql_autocommit",
    "psycopg_tx",
    "psycopg_autocommit",
    "service_trail",
    "service_no_trail",
)


def test_every_variant_leases_and_releases(pg_server: PostgresServer, pg_admin_url: str) -> None:
    """A refused grant or release raises, so a variant whose statements no longer match (the
    release checks the caller that obtained the lease) fails the run instead of timing
    refusals."""
    run = run_benchmark("statement_costs", pg_admin_url, "--rounds", "1", "--duration", "0.2")

    for variant in VARIANTS:
        for what in ("wall", "python_cpu", "postgres_cpu"):
            assert run.figures[f"{variant}_{what}_per_statement"] > 0, run.stdout
