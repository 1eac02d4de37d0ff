"""`migrate` against a live database whose table a long transaction holds (an operator's open
psql session, a stuck report). A migration's ALTER TABLE waits for an ACCESS EXCLUSIVE lock,
and while it waits every later statement on that table queues behind it: the replicas'
leases and refreshes would stop for as long as the transaction stays open. So each attempt
waits at most GARMIN_AUTH_MIGRATION_LOCK_TIMEOUT for a lock, gives up (everything rolled back,
the queue drained) and tries again, GARMIN_AUTH_MIGRATION_ATTEMPTS times, then exits 3 with
a line naming the cause. Before, `migrate` waited as long as the transaction lasted, and so
did every lease statement behind it."""

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
from auth_service.storage.schema import (
    LOCK_TIMEOUT_ATTRIBUTE,
    alembic_config,
    current_revision,
    head_revision,
)
from tests.fixtures.database import PostgresServer, wait_for_lock_waiter

CLI = str(Path(sys.executable).parent / "garmin-auth-service")
# 0013 adds a column to garmin_account_limit: it needs that table's ACCESS EXCLUSIVE lock.
BEFORE_0013 = "0012"


def _migrate(url: str, **settings: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}
    env["GARMIN_AUTH_DATABASE_URL"] = url
    env.update({f"GARMIN_AUTH_{name.upper()}": value for name, value in settings.items()})
    return subprocess.Popen(
        [CLI, "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.postgres
def test_a_table_held_open_neither_blocks_traffic_nor_the_run_forever(
    pg_server: PostgresServer,
) -> None:
    url = pg_server.create_database()
    engine = create_engine_for(url)
    try:
        command.upgrade(alembic_config(url), BEFORE_0013)
        with engine.connect() as holder:
            # An open transaction that read the table: it holds ACCESS SHARE until it ends.
            holder.execute(text("SELECT count(*) FROM garmin_account_limit")).scalar_one()
            started = time.monotonic()
            run = _migrate(url, migration_lock_timeout="0.5", migration_attempts="3")
            try:
                wait_for_lock_waiter(engine, "relation", "migrate", 30)
                # A replica's statement on the same table while migrate waits: it queues
                # behind the ALTER for one attempt's lock timeout at most, not for the
                # holder's life.
                with engine.connect() as replica:
                    replica.execute(text("SET statement_timeout = 3000"))
                    replica.execute(text("SELECT count(*) FROM garmin_account_limit")).one()
                code = run.wait(timeout=60)
            finally:
                run.kill()
            _out, err = run.communicate()
            elapsed = time.monotonic() - started
            holder.rollback()
        assert code == 3, err
        assert "GARMIN_AUTH_MIGRATION_LOCK_TIMEOUT" in err, err
        assert "Traceback" not in err
        assert elapsed < 20, elapsed
        assert current_revision(url) == BEFORE_0013  # each attempt rolled back whole
        # The holder gone, the same command migrates.
        again = _migrate(url, migration_lock_timeout="0.5", migration_attempts="3")
        assert again.wait(timeout=60) == 0, again.communicate()[1]
        assert current_revision(url) == head_revision()
    finally:
        engine.dispose()
        pg_server.drop_database(url)


@pytest.mark.postgres
def test_a_lock_released_between_attempts_lets_the_run_finish(
    pg_server: PostgresServer,
) -> None:
    url = pg_server.create_database()
    engine = create_engine_for(url)
    try:
        command.upgrade(alembic_config(url), BEFORE_0013)
        with engine.connect() as holder:
            holder.execute(text("SELECT count(*) FROM garmin_account_limit")).scalar_one()
            run = _migrate(url, migration_lock_timeout="0.5", migration_attempts="20")
            try:
                wait_for_lock_waiter(engine, "relation", "migrate", 30)
                time.sleep(1)
                holder.rollback()
                code = run.wait(timeout=60)
            finally:
                run.kill()
        out, err = run.communicate()
        assert code == 0, err
        assert current_revision(url) == head_revision()
        assert "is at revision" in out
    finally:
        engine.dispose()
        pg_server.drop_database(url)


@pytest.mark.parametrize(
    ("name", "value"),
    [("migration_lock_timeout", "-1"), ("migration_attempts", "0"), ("migration_attempts", "x")],
)
def test_bad_settings_are_a_config_error(tmp_path: Path, name: str, value: str) -> None:
    run = _migrate(f"sqlite:///{tmp_path / 'db.sqlite3'}", **{name: value})
    code = run.wait(timeout=60)
    _out, err = run.communicate()
    assert code == 2, err
    assert f"GARMIN_AUTH_{name.upper()}" in err


def test_a_positive_lock_timeout_never_becomes_no_timeout() -> None:
    # 0.4 ms was rounded to lock_timeout = 0, PostgreSQL's "no limit": the stall it prevents.
    config = alembic_config("postgresql+psycopg://127.0.0.1/x", lock_timeout_seconds=0.0004)
    assert config.attributes[LOCK_TIMEOUT_ATTRIBUTE] == 1
