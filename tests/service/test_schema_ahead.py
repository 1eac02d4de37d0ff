"""A release serves a database a newer release migrated (README, "Upgrades and rollbacks").

deploy/kubernetes/README.md ("Order") runs the migration Job first, and the old replicas keep
serving meanwhile; every migration since 0004 is additive (nullable columns, new tables). The
running code plays the old release here; the database has the next release's (additive)
migration applied. Before, an old replica that restarted in that window (a liveness failure,
an eviction, `kubectl rollout undo`) refused to start (exit 2, "run migrate first"), and the
old image's migration Job crashed with a traceback (CommandError, exit 1).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from alembic import command
from sqlalchemy import text

from auth_service.storage.database import create_engine_for
from auth_service.storage.schema import alembic_config
from tests.fixtures.emulators import scanned_emulator
from tests.fixtures.servers import CONSUMER_KEY, CONSUMER_SECRET
from tests.service.test_cli import CLI, base_env, free_port, run_cli

NEXT_RELEASE_REVISION = "0099"


def _apply_next_release_migration(url: str) -> None:
    """What the next release's migration does: an additive, nullable column, and its
    revision recorded in alembic_version."""
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("ALTER TABLE garmin_login_throttle ADD COLUMN next_release_hint INTEGER")
            )
            connection.execute(
                text("UPDATE alembic_version SET version_num = :rev"),
                {"rev": NEXT_RELEASE_REVISION},
            )
    finally:
        engine.dispose()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with scanned_emulator(consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET) as garmin:
        yield base_env(
            tmp_path,
            GARMIN_AUTH_LISTEN=f"127.0.0.1:{free_port()}",
            GARMIN_AUTH_UPSTREAM_URL=garmin.url,
        )


def test_an_old_replica_restarts_after_the_next_release_migrated(env: dict[str, str]) -> None:
    assert run_cli("migrate", env=env).returncode == 0
    _apply_next_release_migration(env["GARMIN_AUTH_DATABASE_URL"])

    process = subprocess.Popen(
        [CLI, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        exited = process.poll()
        stderr = "" if exited is None else process.communicate()[1].strip()
        assert exited is None, (
            f"the old replica refused to start (exit {exited}) on a database one additive "
            f"migration ahead: {stderr}"
        )
        with grpc.insecure_channel(env["GARMIN_AUTH_LISTEN"]) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_migrate_of_the_old_image_on_a_newer_database_answers_one_line(
    env: dict[str, str],
) -> None:
    """A rollback re-applies the previous image's manifests, its migration Job included
    (deploy/kubernetes/README.md, "Order"). Its `migrate` meets a revision it does not know:
    it must say so in one line (and never with a Python traceback), not crash."""
    assert run_cli("migrate", env=env).returncode == 0
    _apply_next_release_migration(env["GARMIN_AUTH_DATABASE_URL"])

    result = run_cli("migrate", env=env)

    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 0, (result.returncode, result.stderr[-600:])
    assert f"at revision {NEXT_RELEASE_REVISION}, newer than this release's" in result.stdout
    assert "nothing to do" in result.stdout


def test_check_config_passes_a_newer_schema_with_a_warning(env: dict[str, str]) -> None:
    assert run_cli("migrate", env=env).returncode == 0
    _apply_next_release_migration(env["GARMIN_AUTH_DATABASE_URL"])

    checked = run_cli("check-config", env=env)

    (line,) = [line for line in checked.stdout.splitlines() if "migrations" in line]
    assert line.startswith("ok"), checked.stdout
    assert "newer than this release's head" in line


def test_a_database_behind_is_still_refused(env: dict[str, str]) -> None:
    url = env["GARMIN_AUTH_DATABASE_URL"]
    command.upgrade(alembic_config(url), "0010")

    served = run_cli("serve", env=env)

    assert served.returncode == 2
    assert "run `garmin-auth-service migrate` first" in served.stderr
