"""Check the migrations against a real, empty PostgreSQL database.

Run as `python -m auth_service.storage.check_migrations` (scripts/test does). It creates a
throwaway database on the server that GARMIN_AUTH_TEST_POSTGRES_URL names (default: the local
server, as user postgres), brings it to head with `alembic upgrade head`, checks with
`alembic check` that the models and the migrations agree (no autogenerate drift), and drops the
database again, whatever happened. Exit status 0 when both pass.

The two steps are auth_service.storage.schema.upgrade_to_head(url) and check_no_drift(url);
they are imported only when this runs, so a missing one is reported as such.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

URL_VARIABLE = "GARMIN_AUTH_TEST_POSTGRES_URL"
DEFAULT_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SCHEMA_MODULE = "auth_service.storage.schema"
STEPS = ("upgrade_to_head", "check_no_drift")


class MigrationCheckError(RuntimeError):
    """The check could not run, or a step reported failure."""


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def load_steps() -> list[tuple[str, Callable[[str], object]]]:
    """The schema functions, in order; raises MigrationCheckError naming what is missing."""
    if importlib.util.find_spec(SCHEMA_MODULE) is None:
        raise MigrationCheckError(f"{SCHEMA_MODULE} does not exist")
    # Imported normally: an error inside the module shows its own traceback.
    module = importlib.import_module(SCHEMA_MODULE)
    missing = [name for name in STEPS if not callable(getattr(module, name, None))]
    if missing:
        raise MigrationCheckError(f"{SCHEMA_MODULE} lacks {', '.join(missing)}(url)")
    return [(name, getattr(module, name)) for name in STEPS]


def server_url() -> URL:
    """The server to create the throwaway database on; must be PostgreSQL."""
    url = make_url(os.environ.get(URL_VARIABLE) or DEFAULT_SERVER_URL)
    if url.get_backend_name() != "postgresql":
        raise MigrationCheckError(f"{URL_VARIABLE} must be a postgresql+psycopg:// URL")
    return url


@contextmanager
def throwaway_database(server: URL) -> Iterator[URL]:
    """Create an empty database on `server`, yield its URL, then drop it."""
    name = f"garmin_auth_migration_check_{secrets.token_hex(6)}"
    # `name` is generated here from hex digits only, so quoting it is enough.
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name)
        finally:
            with engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def main() -> int:
    """Run the check; returns the process exit status."""
    try:
        steps = load_steps()
        server = server_url()
    except MigrationCheckError as exc:
        sys.stderr.write(f"check_migrations: {exc}\n")
        return 1
    with throwaway_database(server) as database:
        _say(f"throwaway database: {database.render_as_string(hide_password=True)}")
        url = database.render_as_string(hide_password=False)
        for name, step in steps:
            _say(f"{name} ...")
            if step(url) is False:
                sys.stderr.write(f"check_migrations: {name} reported failure\n")
                return 1
            _say(f"{name}: ok")
    _say("migrations: upgrade to head and drift check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
