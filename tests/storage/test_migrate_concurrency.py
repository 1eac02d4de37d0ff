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
from tests.fixtures.database import PostgresServer, wait_for_lock_waiter

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


# migrations/env.py's MIGRATION_LOCK_KEY: a newer release's env.py takes the same lock.
MIGRATION_LOCK_KEY = 0x67_61_72_6D_69_6E_61_75
NEXT_RELEASE_REVISION = "0099"


@pytest.mark.postgres
def test_migrate_waiting_on_a_newer_releases_run_finds_nothing_to_do(
    pg_server: PostgresServer,
) -> None:
    """A rollback's Job re-applied while the upgrade's Job still runs: this release's run
    waits on the lock, then finds a revision it does not know. Before, it had decided
    "not ahead" before the lock, and Alembic failed (CommandError, exit 1)."""
    url = pg_server.create_database()
    try:
        first = subprocess.run(
            [CLI, "migrate"], check=False, env=_env(url), capture_output=True, text=True
        )
        assert first.returncode == 0, first.stderr[-500:]
        engine = create_engine_for(url)
        try:
            with engine.begin() as connection:
                # The newer release's migration run: holds the lock, adds a nullable column
                # and records its revision, then commits.
                connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
                connection.execute(
                    text("ALTER TABLE garmin_login_throttle ADD COLUMN next_release_hint INTEGER")
                )
                connection.execute(
                    text("UPDATE alembic_version SET version_num = :rev"),
                    {"rev": NEXT_RELEASE_REVISION},
                )
                ours = subprocess.Popen(
                    [CLI, "migrate"],
                    env=_env(url),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                # Ours read the revision (at head for it) and waits in migrations/env.py.
                wait_for_lock_waiter(engine, "advisory", "this release's migrate", 60)
        finally:
            engine.dispose()
        code = ours.wait(timeout=120)
        out, err = ours.communicate()
        assert current_revision(url) == NEXT_RELEASE_REVISION
        assert code == 0, (
            f"this release's migrate, having waited for a newer release's run, exited {code}: "
            f"{err.strip()[-400:]}"
        )
        assert "nothing to do" in out, out
    finally:
        pg_server.drop_database(url)
