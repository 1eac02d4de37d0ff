"""Alembic migrations (migrations/, auth_service.storage.schema) on both backends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from alembic.util.exc import CommandError
from sqlalchemy import Engine, inspect, text

from auth_service.storage.database import create_engine_for
from auth_service.storage.models import Base
from auth_service.storage.schema import (
    SchemaDriftError,
    check_no_drift,
    current_revision,
    downgrade,
    head_revision,
    is_at_head,
    migrations_directory,
    upgrade_to_head,
)
from tests.fixtures.database import pg_dump, table_names

MODEL_TABLES = {table.name for table in Base.metadata.sorted_tables}


def test_upgrade_downgrade_round_trip(empty_database_url: str) -> None:
    url = empty_database_url
    assert current_revision(url) is None
    assert not is_at_head(url)

    upgrade_to_head(url)
    assert current_revision(url) == head_revision()
    assert is_at_head(url)
    assert table_names(url) == MODEL_TABLES | {"alembic_version"}

    downgrade(url, "base")
    assert current_revision(url) is None
    assert not is_at_head(url)
    assert table_names(url) <= {"alembic_version"}

    upgrade_to_head(url)
    assert is_at_head(url)
    check_no_drift(url)


def test_upgrade_is_idempotent(database_url: str) -> None:
    upgrade_to_head(database_url)
    assert is_at_head(database_url)


def test_head_has_no_drift_from_the_models(database_url: str) -> None:
    check_no_drift(database_url)


# Tests that change the schema work on a private database: database_url is shared.


def test_drift_is_detected(empty_database_url: str) -> None:
    upgrade_to_head(empty_database_url)
    _execute(empty_database_url, "ALTER TABLE garmin_login_throttle ADD COLUMN stray INTEGER")

    with pytest.raises(SchemaDriftError, match="stray"):
        check_no_drift(empty_database_url)


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_type_drift_is_detected(empty_database_url: str) -> None:
    # compare_type is on: a column of the wrong type is drift, not just a missing one.
    upgrade_to_head(empty_database_url)
    _execute(
        empty_database_url,
        "ALTER TABLE garmin_mfa_challenge ALTER COLUMN mfa_method TYPE VARCHAR(40)",
    )

    with pytest.raises(SchemaDriftError, match="mfa_method"):
        check_no_drift(empty_database_url)


def _execute(url: str, statement: str) -> None:
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def test_check_refuses_a_database_behind_head(empty_database_url: str) -> None:
    with pytest.raises(CommandError, match="not up to date"):
        check_no_drift(empty_database_url)


def test_migrated_schema_is_exactly_what_the_models_create(
    backend: str, database_url: str, empty_database_url: str
) -> None:
    """Beyond `alembic check` (which ignores CHECK constraints and constraint names): the
    DDL of the migrated database equals the DDL of Base.metadata.create_all."""
    reference = create_engine_for(empty_database_url)
    try:
        Base.metadata.create_all(reference)
    finally:
        reference.dispose()

    if backend == "sqlite":
        assert _sqlite_schema(database_url) == _sqlite_schema(empty_database_url)
    else:
        migrated = pg_dump(database_url, "--schema-only", "--exclude-table=alembic_version")
        assert _normalise_dump(migrated) == _normalise_dump(
            pg_dump(empty_database_url, "--schema-only")
        )


def _sqlite_schema(url: str) -> list[tuple[str, str, list[str]]]:
    """Each object's DDL as its sorted lines: SQLite keeps a table copied by a migration
    (ALTER TABLE ... RENAME) with its name quoted, and lists its constraints in the order
    they were added; neither changes what the table is."""
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT type, name, sql FROM sqlite_master "
                    "WHERE name NOT LIKE 'alembic_version%' AND name NOT LIKE 'sqlite_%' "
                    "ORDER BY type, name"
                )
            ).all()
    finally:
        engine.dispose()
    return [
        (row[0], row[1], sorted(line.strip().rstrip(",") for line in _unquoted(row).splitlines()))
        for row in rows
    ]


def _unquoted(row: Any) -> str:
    return str(row[2]).replace(f'CREATE TABLE "{row[1]}"', f"CREATE TABLE {row[1]}", 1)


def _normalise_dump(dump: str) -> str:
    # pg_dump 15.14+ brackets the dump in \restrict <random key> ... \unrestrict <same key>.
    return re.sub(r"^\\(un)?restrict .*$", "", dump, flags=re.MULTILINE)


def test_enum_check_constraint_is_created_by_the_migration(engine: Engine) -> None:
    constraints = inspect(engine).get_check_constraints("garmin_authentication_state")
    assert sorted(str(c["name"]) for c in constraints) == [
        "ck_garmin_authentication_state_session_kind",
        "ck_garmin_authentication_state_session_state",
    ]


def test_migrations_are_installed_with_the_package() -> None:
    directory = Path(migrations_directory())
    assert (directory / "env.py").is_file()
    assert head_revision() == "0019"


def test_revisions_do_not_import_the_models() -> None:
    # A revision must keep producing the same schema when the models change later.
    for revision in (Path(migrations_directory()) / "versions").glob("*.py"):
        assert "auth_service" not in revision.read_text(), revision.name
