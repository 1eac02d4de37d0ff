"""`rotate-keys` and `prune-audit` on a database that is not migrated, or that a newer release
migrated.

README (Commands): exit 3 means the database does not answer (a Job's retry policy waits for
it to come back), exit 2 a configuration an operator must fix. Before, both commands ran their
first statement on a never-migrated database, failed on a missing table and exited 3 ("database
error ... no such table"): a database that answers, reported as one that does not, and retried
for nothing. Now they check the schema first, as `serve` does: a database behind this
release's migrations is exit 2 with "run `garmin-auth-service migrate` first", and one a newer
release migrated is used (migrations only add), with a warning.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.test_cli import base_env, run_cli
from tests.service.test_schema_ahead import _apply_next_release_migration

EXIT_CONFIG = 2

COMMANDS = ["rotate-keys", "prune-audit"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_never_migrated_database_is_exit_2_run_migrate_first(
    tmp_path: Path, command: str
) -> None:
    database = tmp_path / "db.sqlite3"
    database.touch()  # an existing, empty (never migrated) database
    env = base_env(tmp_path, GARMIN_AUTH_DATABASE_URL=f"sqlite:///{database}")

    result = run_cli(command, env=env)

    stderr = result.stderr[-400:]
    assert (result.returncode, "Traceback" in result.stderr) == (EXIT_CONFIG, False), stderr
    assert "run `garmin-auth-service migrate` first" in result.stderr, stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_a_database_a_newer_release_migrated_is_used(tmp_path: Path, command: str) -> None:
    """Not a regression of the old code (it ran here too): the schema check added for the
    test above must not refuse what `serve` serves."""
    env = base_env(tmp_path)
    assert run_cli("migrate", env=env).returncode == 0
    _apply_next_release_migration(env["GARMIN_AUTH_DATABASE_URL"])

    result = run_cli(command, env=env)

    assert result.returncode == 0, result.stderr[-400:]
