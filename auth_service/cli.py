"""`garmin-auth-service`: serve, migrate, rotate-keys, hash-token, new-caller-token,
health-check, check-config, prune-audit, demo."""

from __future__ import annotations

import argparse
import functools
import getpass
import logging
import os
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from auth_service.api.callers import CallersFileError, token_sha256
from auth_service.config import (
    MAX_AUDIT_RETENTION_DAYS,
    load_audit_retention_days,
    load_database_url,
    load_keyring,
    load_migration_locking,
    load_settings,
    read_environment,
    redacted_database_url,
)
from auth_service.operator_commands import (
    HEALTH_SERVICES,
    check_token,
    health_check,
    new_caller_entry,
    rotation_lines,
)
from auth_service.serving_config import load_log_level, plaintext_upstream
from garmin_client.env import ConfigError
from garmin_client.logging_setup import configure_logging

log = logging.getLogger("auth_service")

EXIT_CONFIG = 2
EXIT_DATABASE = 3


def _serve(args: argparse.Namespace) -> int:
    # gRPC's C core logs by itself, in its own format, on stderr: a failed TLS handshake (any
    # port scan) would add a line a JSON log pipeline cannot read. Only its errors, unless the
    # operator asks for more; read when gRPC starts, so set before it is imported.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from auth_service.server import build_application, serve_until_signalled, start_server
    from auth_service.storage.database import describe_database_error
    from auth_service.storage.schema import SchemaState, head_revision, schema_state

    settings = load_settings(args.environment())
    for problem in plaintext_upstream(settings.upstream.base_url, settings.di.plain_http):
        log.warning(
            "%s: Garmin passwords and tokens cross the network unencrypted (emulator only; "
            "refused when GARMIN_AUTH_ENVIRONMENT=production)",
            problem,
        )
    # Before anything connects: connecting creates a missing SQLite file, and a mistyped path
    # was left behind as an empty database (which check-config then found "reachable"). No
    # start needs that: serve never ran on a new file, which is not migrated; `migrate` (and
    # `demo`, which migrates its own) create it.
    _refuse_missing_sqlite_file(settings.database_url)
    try:
        state, revision = schema_state(settings.database_url)
    except SQLAlchemyError as exc:
        # One JSON line an operator can read, not a driver traceback.
        log.error(  # noqa: TRY400 - the traceback is what we leave out on purpose
            "cannot start: the database %s does not answer: %s",
            redacted_database_url(settings.database_url),
            describe_database_error(exc, settings.database_url),
        )
        return EXIT_DATABASE
    if state is SchemaState.BEHIND:
        print(
            f"garmin-auth-service: the database ({redacted_database_url(settings.database_url)}) "
            "is not at the latest migration; run `garmin-auth-service migrate` first",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if state is SchemaState.AHEAD:
        # An old replica restarting during a rollout, or a rollback: migrations are additive.
        log.warning(
            "the database is at revision %s, newer than this release's %s: serving on it "
            "(a newer release migrated it; migrations only add columns and tables)",
            revision,
            head_revision(),
        )
    if settings.allow_unauthenticated:
        log.warning(
            "GARMIN_AUTH_ALLOW_UNAUTHENTICATED is set: EVERY caller gets EVERY role, including "
            "the worker role that receives Garmin tokens. Development only; never in production."
        )
    running = start_server(build_application(settings))
    print(f"garmin-auth-service listening on port {running.port}", file=sys.stderr, flush=True)
    serve_until_signalled(running)
    # The grace period is over and everything that must be handed over was (health, webhook
    # claim, access log, metrics). A handler still running (a Garmin call, a wait on another
    # replica's refresh claim) would keep the interpreter waiting at exit for the RPC pool's
    # threads, past the pod's termination grace; its caller was already cancelled, and its
    # open transaction rolls back. So exit now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _migrate(args: argparse.Namespace) -> int:
    from auth_service.storage.schema import (
        MigrationLockTimeout,
        SchemaState,
        head_revision,
        schema_state,
        upgrade_to_head,
    )

    env = args.environment()
    url = load_database_url(env)
    locking = load_migration_locking(env)
    # On a database a newer release migrated (before or while this run waited for the
    # migration lock) the upgrade does nothing (migrations/env.py).
    try:
        upgrade_to_head(
            url, lock_timeout_seconds=locking.lock_timeout_seconds, attempts=locking.attempts
        )
    except MigrationLockTimeout as exc:
        print(
            f"garmin-auth-service: database error on {redacted_database_url(url)}: {exc}",
            file=sys.stderr,
        )
        return EXIT_DATABASE
    state, revision = schema_state(url)
    if state is SchemaState.AHEAD:
        # An older release's migration Job (a rollback re-applies it): nothing of ours to do.
        print(
            f"database {redacted_database_url(url)} is at revision {revision}, newer than this "
            f"release's {head_revision()}: nothing to do"
        )
        return 0
    print(f"database {redacted_database_url(url)} is at revision {revision}")
    return 0


# rotate-keys holds a batch's rows and their new blobs in memory, and the database takes the
# batch size as a LIMIT: 2**63 overflowed it (a traceback, exit 1: "an old key is needed").
MAX_ROTATION_BATCH_SIZE = 100_000


def _rotate_keys(args: argparse.Namespace) -> int:
    from auth_service.storage.database import create_engine_for
    from auth_service.storage.key_rotation import PrimaryKeyMismatch, rotate_keys

    if not 1 <= args.batch_size <= MAX_ROTATION_BATCH_SIZE:
        raise ConfigError("--batch-size", f"must be 1-{MAX_ROTATION_BATCH_SIZE}")
    env = args.environment()
    keyring = load_keyring(env)
    url = load_database_url(env)
    _refuse_missing_sqlite_file(url)
    if not _migrated(url, "rotate-keys"):
        return EXIT_CONFIG
    engine = create_engine_for(url)
    try:
        report = rotate_keys(engine, keyring, batch_size=args.batch_size)
    except PrimaryKeyMismatch as exc:
        print(f"garmin-auth-service: rotate-keys refused: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        engine.dispose()
    for line in rotation_lines(report):
        print(line)
    if not report.primary_checked:
        print(
            f"note: nothing was stored under the primary key {report.primary_kid!r} before this "
            "run, so no stored secret confirmed it is the replicas' key",
            file=sys.stderr,
        )
    # Anything left behind (undecryptable or still changing) means the old key is still needed.
    return 0 if report.complete else 1


def _migrated(url: str, command: str) -> bool:
    """Whether `command` may run on the database, as `serve` decides: not on one behind this
    release's migrations (said on stderr), where its first statement would fail on a missing
    table and be reported as a database that does not answer (exit 3, which a Job retries).
    On one a newer release migrated it runs, with a warning: migrations only add."""
    from auth_service.storage.schema import SchemaState, head_revision, schema_state

    state, revision = schema_state(url)
    if state is SchemaState.BEHIND:
        print(
            f"garmin-auth-service: the database ({redacted_database_url(url)}) is not at the "
            "latest migration; run `garmin-auth-service migrate` first",
            file=sys.stderr,
        )
        return False
    if state is SchemaState.AHEAD:
        log.warning(
            "the database is at revision %s, newer than this release's %s: running %s on it "
            "(a newer release migrated it; migrations only add columns and tables)",
            revision,
            head_revision(),
            command,
        )
    return True


def _refuse_missing_sqlite_file(url: str) -> None:
    """A mistyped SQLite path must not become a new, empty database file."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    path = parsed.database
    is_file = parsed.get_backend_name() == "sqlite" and path and path != ":memory:"
    if is_file and not Path(str(path)).exists():
        raise ConfigError(
            "GARMIN_AUTH_DATABASE_URL",
            "the SQLite database file does not exist (run `garmin-auth-service migrate` to "
            "create it)",
        )


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from auth_service.demo import run_demo

    return run_demo(Path(args.folder), once=args.once)


def _check_config(args: argparse.Namespace) -> int:
    from auth_service.checks import run_checks

    results = run_checks()
    for result in results:
        print(result.line(), flush=True)
    return 0 if all(result.ok for result in results) else 1


def _prune_audit(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from auth_service.storage.audit_pruning import prune_audit
    from auth_service.storage.database import create_engine_for

    env = args.environment()
    days = args.older_than if args.older_than is not None else load_audit_retention_days(env)
    if not 1 <= days <= MAX_AUDIT_RETENTION_DAYS:
        raise ConfigError("--older-than", f"must be 1-{MAX_AUDIT_RETENTION_DAYS} days")
    url = load_database_url(env)
    _refuse_missing_sqlite_file(url)
    if not _migrated(url, "prune-audit"):
        return EXIT_CONFIG
    engine = create_engine_for(url)
    try:
        deleted = prune_audit(engine, timedelta(days=days))
    finally:
        engine.dispose()
    print(f"deleted {deleted} audit events older than {days} days")
    return 0


def _hash_token(args: argparse.Namespace) -> int:
    # Stripped either way, as the service strips what follows "Bearer " (and the worker its
    # token): a space pasted around a typed token must not be hashed into the entry.
    token = getpass.getpass("token: ").strip() if sys.stdin.isatty() else _token_from_stdin()
    if not token:
        print("garmin-auth-service: no token given", file=sys.stderr)
        return EXIT_CONFIG
    check_token(token)
    print(token_sha256(token))
    return 0


def _token_from_stdin() -> str:
    """The first line of stdin. Read as bytes and decoded here: bytes that are not UTF-8 (a
    binary paste) made a traceback, from readline() in a UTF-8 locale or, under the C
    locale, from hashing the surrogates they became. Now they are U+FFFD, which check_token
    refuses in one line."""
    return sys.stdin.buffer.readline().decode("utf-8", errors="replace").strip()


def _new_caller_token(args: argparse.Namespace) -> int:
    token, entry = new_caller_entry(args.name, args.role, args.user_id_prefix)
    print(f"token (give it to the caller; it is not stored anywhere): {token}")
    print("callers-file entry:")
    print(entry)
    return 0


def _health_check(args: argparse.Namespace) -> int:
    serving, line = health_check(args.service)
    print(line)
    return 0 if serving else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="garmin-auth-service",
        description="Keeps users' Garmin Connect sessions and lends them to sync workers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gRPC server").set_defaults(run=_serve)
    commands.add_parser("migrate", help="upgrade the database to the latest schema").set_defaults(
        run=_migrate
    )
    rotate = commands.add_parser(
        "rotate-keys", help="re-encrypt every stored secret under the primary key (online)"
    )
    rotate.add_argument(
        "--batch-size", type=int, default=500, help="rows re-encrypted per transaction"
    )
    rotate.set_defaults(run=_rotate_keys)
    demo = commands.add_parser(
        "demo", help="run everything on embedded defaults (SQLite, dev key, Garmin emulator)"
    )
    demo.add_argument("--folder", default="demo-data", help="where the demo keeps its state")
    demo.add_argument("--once", action="store_true", help="stop after the demo instead of serving")
    demo.set_defaults(run=_demo)
    prune = commands.add_parser(
        "prune-audit",
        help="delete audit events and change log entries older than the retention "
        "(default 90 days)",
    )
    prune.add_argument(
        "--older-than",
        type=int,
        metavar="DAYS",
        help="retention in days (default: GARMIN_AUTH_AUDIT_RETENTION_DAYS, else 90)",
    )
    prune.set_defaults(run=_prune_audit)
    commands.add_parser(
        "hash-token", help="print the token_sha256 of a bearer token read from stdin"
    ).set_defaults(run=_hash_token)
    new_token = commands.add_parser(
        "new-caller-token", help="print a new bearer token and its callers-file entry"
    )
    new_token.add_argument("--name", required=True, help="the caller's name in the file")
    new_token.add_argument(
        "--role", required=True, action="append", help="admin, viewer, worker or worker_full"
    )
    new_token.add_argument("--user-id-prefix", help="optional: the users it may reach")
    new_token.set_defaults(run=_new_caller_token)
    health = commands.add_parser(
        "health-check",
        help="ask the local health listener (GARMIN_AUTH_HEALTH_LISTEN); exit 0 if SERVING",
    )
    health.add_argument("--service", choices=HEALTH_SERVICES, default="liveness")
    health.set_defaults(run=_health_check)
    commands.add_parser(
        "check-config",
        help="check settings, database, migrations, keys, callers, TLS files; exit 1 on a problem",
    ).set_defaults(run=_check_config)
    return parser


# Commands that report a malformed setting in their own output (check-config: one line per
# check, exit 1; health-check: one line, exit 1): a bad log level must not stop them first.
_REPORT_THEIR_OWN_SETTINGS = frozenset({"check-config", "health-check"})


def _log_level(command: str) -> int:
    try:
        return load_log_level(os.environ)
    except ConfigError:
        if command not in _REPORT_THEIR_OWN_SETTINGS:
            raise
        return logging.INFO


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    # os.environ with its secret files read at the first use, then kept for the rest of the
    # command: read again, a pipe (a shell's <(...)) would be empty. Commands that need no
    # secret (hash-token, health-check) never call it.
    args.environment = environment = functools.cache(read_environment)
    try:
        configure_logging(_log_level(args.command))
        return run(args)
    except (ConfigError, CallersFileError) as exc:
        print(f"garmin-auth-service: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SQLAlchemyError as exc:
        # migrate, rotate-keys, prune-audit: one line an operator can act on, no traceback
        # (and never exit 1, which rotate-keys keeps for "an old key is still needed").
        from auth_service.storage.database import describe_database_error

        url = load_database_url(environment())
        print(
            f"garmin-auth-service: database error on {redacted_database_url(url)}: "
            f"{describe_database_error(exc, url)}",
            file=sys.stderr,
        )
        return EXIT_DATABASE


if __name__ == "__main__":
    sys.exit(main())
