"""Alembic environment. The database URL always comes from our code, never from this file.

Where the URL comes from, in order:
1. `Config.attributes["database_url"]`, set by auth_service.storage.schema (the service
   and its CLI migrate this way);
2. `alembic -x database_url=...` when authoring revisions with the alembic CLI;
3. the service settings (GARMIN_AUTH_DATABASE_URL, through config.load_database_url).
"""

from __future__ import annotations

import warnings
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SAWarning

from auth_service.config import load_database_url
from auth_service.storage.database import create_engine_for
from auth_service.storage.models import Base, UTCDateTime
from auth_service.storage.schema import DATABASE_URL_ATTRIBUTE, LOCK_TIMEOUT_ATTRIBUTE

config = context.config
target_metadata = Base.metadata

# The key of the PostgreSQL advisory lock migration runs take ("garmin-auth" as a number).
MIGRATION_LOCK_KEY = 0x67_61_72_6D_69_6E_61_75


def _database_url() -> str:
    explicit = config.attributes.get(DATABASE_URL_ATTRIBUTE)
    if explicit:
        return str(explicit)
    from_cli = context.get_x_argument(as_dictionary=True).get(DATABASE_URL_ATTRIBUTE)
    if from_cli:
        return from_cli
    return load_database_url()


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Revisions must not import our models (they change; old revisions must not), so our
    # UTC type is written as the plain column type it stores.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **kwargs,
    )


def run_migrations_offline(url: str) -> None:
    """Emit SQL to stdout (`alembic upgrade --sql`) instead of touching a database."""
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=make_url(url).get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online(url: str) -> None:
    # No statement timeout: a migration may legitimately rewrite a whole table.
    engine = create_engine_for(url, statement_timeout_ms=0)
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


def _migrate(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch operations rebuild a table (create copy, drop, rename); with foreign keys ON,
        # dropping a parent table would cascade-delete its children. The pragma is ignored
        # inside a transaction, so it goes to the driver before Alembic begins one; the
        # connection is discarded with the engine afterwards.
        _driver_connection(connection).execute("PRAGMA foreign_keys = OFF")
    _configure(
        connection=connection,
        render_as_batch=sqlite,
        # Our SQLite engine issues BEGIN itself, which makes SQLite DDL transactional: a
        # failed upgrade rolls back entirely, as on PostgreSQL.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if not sqlite:
            # One migration run at a time (two deploy pipelines, a manual run beside the
            # Job): the others wait here, then find the database at head and do nothing.
            # Released with the transaction. (SQLite's writer lock already does this.)
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            # Set after the advisory lock: a run waits for another run as long as it lasts,
            # but not for a table a long transaction holds (schema.upgrade_to_head).
            lock_timeout_ms = int(config.attributes.get(LOCK_TIMEOUT_ATTRIBUTE, 0))
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = {lock_timeout_ms}")
        if _migrated_by_a_newer_release():
            # Read under the lock (the run we waited for may have been a newer release's),
            # or SQLite's writer lock: nothing of ours to do.
            return
        with warnings.catch_warnings():
            # SQLite's batch migrations copy the table and re-create its expression index
            # (ix_garmin_authentication_state_due) themselves; SQLAlchemy's warning that it
            # cannot reflect that index was noise on every fresh `migrate`.
            warnings.filterwarnings(
                "ignore", "Skipped unsupported reflection of expression-based index", SAWarning
            )
            context.run_migrations()
        if sqlite:
            _check_foreign_keys(connection)


def _migrated_by_a_newer_release() -> bool:
    """Whether the database is at a revision these migrations do not know (a newer release
    migrated it; every older revision is among ours)."""
    known = {script.revision for script in context.script.walk_revisions()}
    current = context.get_context().get_current_heads()
    return any(revision not in known for revision in current)


def _driver_connection(connection: Connection) -> Any:
    driver_connection = connection.connection.driver_connection
    if driver_connection is None:
        raise RuntimeError("the database connection is closed")
    return driver_connection


def _check_foreign_keys(connection: Connection) -> None:
    # Foreign keys were off during the migration; refuse to commit one that broke them.
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        tables = sorted({str(row[0]) for row in violations})
        raise RuntimeError(f"migration left foreign key violations in {', '.join(tables)}")


def main() -> None:
    if config.config_file_name is not None:
        # Only the alembic CLI (alembic.ini) configures logging; the service owns its own.
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = _database_url()
    if context.is_offline_mode():
        run_migrations_offline(url)
    else:
        run_migrations_online(url)


main()
