"""`garmin-auth-service`: serve, migrate, rotate-keys, hash-token."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Callable, Sequence

from auth_service.api.callers import CallersFileError, token_sha256
from auth_service.config import (
    load_audit_retention_days,
    load_database_url,
    load_keyring,
    load_settings,
    redacted_database_url,
)
from garmin_client.env import ConfigError
from garmin_client.logging_setup import configure_logging

log = logging.getLogger("auth_service")

EXIT_CONFIG = 2


def _serve(args: argparse.Namespace) -> int:
    from auth_service.server import build_application, serve_until_signalled, start_server
    from auth_service.storage.schema import is_at_head

    settings = load_settings()
    if not is_at_head(settings.database_url):
        print(
            f"garmin-auth-service: the database ({redacted_database_url(settings.database_url)}) "
            "is not at the latest migration; run `garmin-auth-service migrate` first",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if settings.allow_unauthenticated:
        log.warning(
            "GARMIN_AUTH_ALLOW_UNAUTHENTICATED is set: EVERY caller gets EVERY role, including "
            "the worker role that receives Garmin tokens. Development only; never in production."
        )
    running = start_server(build_application(settings))
    print(f"garmin-auth-service listening on port {running.port}", file=sys.stderr, flush=True)
    serve_until_signalled(running)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from auth_service.storage.schema import current_revision, upgrade_to_head

    url = load_database_url()
    upgrade_to_head(url)
    print(f"database {redacted_database_url(url)} is at revision {current_revision(url)}")
    return 0


def _rotate_keys(args: argparse.Namespace) -> int:
    from auth_service.storage.database import create_engine_for
    from auth_service.storage.key_rotation import rotate_keys

    keyring = load_keyring()
    engine = create_engine_for(load_database_url())
    try:
        report = rotate_keys(engine, keyring, batch_size=args.batch_size)
    finally:
        engine.dispose()
    print(report)
    # Anything left behind (undecryptable or still changing) means the old key is still needed.
    return 0 if report.complete else 1


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

    days = args.older_than if args.older_than is not None else load_audit_retention_days()
    if days < 1:
        raise ConfigError("--older-than", "must be at least 1 day")
    engine = create_engine_for(load_database_url())
    try:
        deleted = prune_audit(engine, timedelta(days=days))
    finally:
        engine.dispose()
    print(f"deleted {deleted} audit events older than {days} days")
    return 0


def _hash_token(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip() if not sys.stdin.isatty() else getpass.getpass("token: ")
    if not token:
        print("garmin-auth-service: no token given", file=sys.stderr)
        return EXIT_CONFIG
    print(token_sha256(token))
    return 0


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
    rotate.add_argument("--batch-size", type=int, default=500)
    rotate.set_defaults(run=_rotate_keys)
    demo = commands.add_parser(
        "demo", help="run everything on embedded defaults (SQLite, dev key, Garmin emulator)"
    )
    demo.add_argument("--folder", default="demo-data", help="where the demo keeps its state")
    demo.add_argument("--once", action="store_true", help="stop after the demo instead of serving")
    demo.set_defaults(run=_demo)
    prune = commands.add_parser(
        "prune-audit", help="delete audit events older than the retention (default 90 days)"
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
    commands.add_parser(
        "check-config",
        help="check settings, database, migrations, keys, callers, TLS files; exit 1 on a problem",
    ).set_defaults(run=_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (ConfigError, CallersFileError) as exc:
        print(f"garmin-auth-service: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
