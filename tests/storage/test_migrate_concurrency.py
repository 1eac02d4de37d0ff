"""Two `garmin-auth-service migrate` runs at once (two deploy pipelines, a migration Job
applied while a CI or manual `migrate` runs, a Job re-created before its first pod ended):
the Job is documented as idempotent (deploy/kubernetes/base/migrate-job.yaml), so every run
ends with exit 0 and the database at head. Before, on PostgreSQL, all runs but one failed
(exit 3: UniqueViolation on a type, DuplicateColumn): nothing kept two runs apart. A run now
takes an advisory lock first (migrations/env.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from auth_service.storage.database import create_engine_for
from auth_service.storage.schema import alembic_config, current_revision, head_revision
from tests.fixtures.database import PostgresServer

CLI = str(Path(sys.executable).parent / "garmin-auth-service")


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}
    env["GARMIN_AUTH_DATABASE_URL"] = url
    return env


def _start(url: str, runs: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [CLI, "migrate"],
            env=_env(url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(runs)
    ]


def _failures(processes: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    results = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    return [(code, err.strip()[-300:]) for code, _out, err in results if code != 0]


@pytest.mark.postgres
@pytest.mark.parametrize("runs", [2, 4])
def test_concurrent_migrate_of_a_new_database(pg_server: PostgresServer, runs: int) -> None:
    url = pg_server.create_database()
    try:
        failed = _failures(_start(url, runs))
        assert current_revision(url) == head_revision()
        assert failed == [], f"concurrent migrate runs failed: {failed}"
    finally:
        pg_server.drop_database(url)


@pytest.mark.postgres
@pytest.mark.parametrize("start", ["0009", "0010"])
def test_concurrent_migrate_of_an_earlier_release(pg_server: PostgresServer, start: str) -> None:
    """The runs meet for sure: both wait on a reader of alembic_version (a check-config of an
    old pod, say) and go on together."""
    url = pg_server.create_database()
    try:
        command.upgrade(alembic_config(url), start)
        engine = create_engine_for(url)
        try:
            with engine.begin() as connection:
                connection.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
                processes = _start(url, 2)
                time.sleep(4)  # both have started and wait on the lock
        finally:
            engine.dispose()
        failed = _failures(processes)
        assert current_revision(url) == head_revision()
        assert failed == [], f"concurrent migrate runs failed: {failed}"
    finally:
        pg_server.drop_database(url)


def test_concurrent_migrate_jobs_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    failed = _failures(_start(url, 4))
    assert current_revision(url) == head_revision()
    assert failed == [], f"concurrent migrate runs failed: {failed}"
