"""`garmin-sync-worker`: run (sync users' Garmin activities) and init-sink.

Exit codes (CronJob semantics): 0 normal life (every user SYNCED, NOTHING_NEW, AUTH_EXPIRED,
RATE_LIMITED or LEASE_LOST, or nothing due); 1 any user FAILED, or --all gave up on
LeaseNextSession failing; 2 usage or configuration error; 3 the auth service is unreachable
or refuses the worker's credentials; 4 Garmin was down for too many users in a row; 143
after SIGTERM (or SIGINT), once every lease is released.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import NoReturn

from garmin_client.env import ConfigError, EnvReader
from garmin_client.logging_setup import configure_logging
from garmin_client.url_secrets import redacted_url
from sync_worker.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE_TTL,
    DEFAULT_MIN_SYNC_INTERVAL,
    ENV_PREFIX,
    WorkerConfig,
    auth_client_config,
    check_sink_url,
    default_holder,
    parse_duration,
    rate_limit_max_wait,
    upstream_settings,
)
from sync_worker.control import DEFAULT_MAX_GARMIN_UNAVAILABLE, RunControl
from sync_worker.postgres_sink import PostgresSink
from sync_worker.runner import EXIT_CONFIG, run
from sync_worker.sinks import SinkError
from sync_worker.sync import DEFAULT_GARMIN_CALL_TIMEOUT, SyncOptions

PROG = "garmin-sync-worker"
# A deadline per RPC longer than an hour is a typo (and grpc refuses an infinite one).
MAX_RPC_TIMEOUT_SECONDS = 3600


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line, not the usage block: it ends up in a CronJob's log.
        self.exit(EXIT_CONFIG, f"{PROG}: usage error: {message} (see --help)\n")


def _seconds(name: str) -> Callable[[str], timedelta]:
    def convert(text: str) -> timedelta:
        try:
            return parse_duration(text, name)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Sync users' Garmin activities through leases.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run_cmd = commands.add_parser(
        "run",
        help="lease users' sessions and sync their activities",
        description="Environment: GARMIN_SYNC_AUTH_TARGET, GARMIN_SYNC_AUTH_TOKEN (bearer, "
        "role worker) or GARMIN_SYNC_AUTH_TOKEN_FILE (a file holding it), "
        "GARMIN_SYNC_UPSTREAM_URL, GARMIN_SYNC_UPSTREAM_TIMEOUT/_RETRIES/_CALL_TIMEOUT, "
        "GARMIN_SYNC_TLS_CA/_CERT/_KEY/_SERVER_NAME, "
        "GARMIN_SYNC_OUT, GARMIN_SYNC_SINK, GARMIN_SYNC_RATE_LIMIT_MAX_WAIT.",
    )
    who = run_cmd.add_mutually_exclusive_group()
    who.add_argument("--user", action="append", default=[], metavar="ID", help="repeatable")
    who.add_argument("--all", action="store_true", help="drain every due session")
    run_cmd.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    run_cmd.add_argument("--holder", default=None, help="default: hostname:pid")
    run_cmd.add_argument("--max-runtime", type=_seconds("--max-runtime"), default=None)
    run_cmd.add_argument(
        "--min-sync-interval",
        type=_seconds("--min-sync-interval"),
        default=DEFAULT_MIN_SYNC_INTERVAL,
        help="--all skips users synced or attempted this recently (default 15m)",
    )
    run_cmd.add_argument("--lease-ttl", type=_seconds("--lease-ttl"), default=DEFAULT_LEASE_TTL)
    run_cmd.add_argument("--backfill-days", type=int, default=30)
    run_cmd.add_argument("--overlap", type=_seconds("--overlap"), default=timedelta(days=1))
    run_cmd.add_argument("--with-files", action="store_true", help="also download originals")
    run_cmd.add_argument("--page-size", type=int, default=100)
    run_cmd.add_argument("--out", type=Path, default=None, metavar="DIR")
    run_cmd.add_argument("--sink", default=None, metavar="postgresql://...")
    run_cmd.add_argument("--target", default=None, help="auth service host:port")
    run_cmd.add_argument(
        "--rpc-timeout",
        type=_seconds("--rpc-timeout"),
        default=timedelta(seconds=30),
        help="deadline of every RPC (30s; a bare number is seconds)",
    )
    run_cmd.add_argument(
        "--progress-interval",
        type=_seconds("--progress-interval"),
        default=timedelta(seconds=30),
        help="how often a long run logs its progress (30s, at least 1s)",
    )
    run_cmd.add_argument(
        "--max-garmin-unavailable",
        type=int,
        default=DEFAULT_MAX_GARMIN_UNAVAILABLE,
        metavar="N",
        help="give up (exit 4) after Garmin's being down failed N users in a row",
    )
    run_cmd.add_argument(
        "--rate-limit-max-wait",
        type=_seconds("--rate-limit-max-wait"),
        default=None,
        metavar="DUR",
        help="the longest pause a Garmin Retry-After imposes (default "
        "GARMIN_SYNC_RATE_LIMIT_MAX_WAIT, else 1h; 1s to 7d)",
    )
    run_cmd.set_defaults(handler=_run)
    init = commands.add_parser("init-sink", help="create the PostgreSQL sink's tables")
    init.add_argument("--sink", default=None, metavar="postgresql://...")
    init.set_defaults(handler=_init_sink)
    return parser


def _config(args: argparse.Namespace, env: EnvReader) -> WorkerConfig:
    if not 1 <= args.page_size <= 1000:  # noqa: PLR2004
        raise ConfigError("--page-size", "must be between 1 and 1000")
    if not 0 <= args.backfill_days <= 3650:  # noqa: PLR2004
        raise ConfigError("--backfill-days", "must be between 0 and 3650")
    if not 0 < args.rpc_timeout.total_seconds() <= MAX_RPC_TIMEOUT_SECONDS:
        raise ConfigError("--rpc-timeout", f"must be positive, at most {MAX_RPC_TIMEOUT_SECONDS} s")
    # Flags win over the environment; the environment suits a CronJob's Secret.
    if args.out is not None or args.sink is not None:
        out, sink_url = args.out, args.sink
    else:
        env_out = env.get("OUT")
        out, sink_url = (Path(env_out) if env_out else None), env.get("SINK")
    return WorkerConfig(
        auth=auth_client_config(env, args.target, args.rpc_timeout.total_seconds()),
        sync=SyncOptions(
            upstream=upstream_settings(env),
            lease_ttl=args.lease_ttl,
            backfill=timedelta(days=args.backfill_days),
            overlap=args.overlap,
            with_files=args.with_files,
            page_size=args.page_size,
            garmin_call_timeout=env.number(
                "UPSTREAM_CALL_TIMEOUT", DEFAULT_GARMIN_CALL_TIMEOUT, minimum=1, maximum=3600
            ),
        ),
        users=tuple(args.user),
        all_users=args.all,
        concurrency=args.concurrency,
        # Only an absent --holder takes the default: an empty one is refused below, not
        # silently replaced.
        holder=default_holder() if args.holder is None else args.holder,
        max_runtime=None if args.max_runtime is None else args.max_runtime.total_seconds(),
        min_sync_interval=args.min_sync_interval,
        out_dir=out,
        sink_url=None if sink_url is None else check_sink_url(sink_url),
        progress_interval=max(1.0, args.progress_interval.total_seconds()),
        max_garmin_unavailable=args.max_garmin_unavailable,
        rate_limit_max_wait=rate_limit_max_wait(args.rate_limit_max_wait, env),
    )


@contextmanager
def _stop_on_signals(control: RunControl) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        control.request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _run(args: argparse.Namespace, env: EnvReader) -> int:
    config = _config(args, env)
    control = RunControl(
        config.max_runtime,
        max_garmin_unavailable=config.max_garmin_unavailable,
        max_rate_limit_pause=config.rate_limit_max_wait,
    )
    with _stop_on_signals(control):
        report = run(config, out=sys.stdout, err=sys.stderr, control=control)
    fatal = report.fatal
    if fatal is not None:
        what = "refuses the worker's credentials" if fatal.credentials_refused else "is unreachable"
        status = " ".join(part for part in (fatal.code.name, fatal.reason) if part)
        print(
            f"{PROG}: the auth service at {config.auth.target} {what} ({status})", file=sys.stderr
        )
    if report.settings_refused is not None:
        print(
            f"{PROG}: the auth service refuses this run's settings ({report.settings_refused}); "
            "check --lease-ttl and --min-sync-interval against the service's limits",
            file=sys.stderr,
        )
    if report.garmin_outage is not None:
        print(
            f"{PROG}: {report.garmin_outage}; stopped taking users (exit 4). Garmin is down or "
            "blocking us: run again later",
            file=sys.stderr,
        )
    if report.drain_failure is not None:
        print(f"{PROG}: {report.drain_failure}; gave up taking users (exit 1)", file=sys.stderr)
    return report.exit_code


def _init_sink(args: argparse.Namespace, env: EnvReader) -> int:
    url = args.sink or env.get("SINK")
    if url is None:
        raise ConfigError("--sink", "give the sink database URL (or GARMIN_SYNC_SINK)")
    PostgresSink(check_sink_url(url)).init_schema()
    print(f"sink {redacted_url(url)} is ready")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = EnvReader(os.environ, ENV_PREFIX)
    level = (env.get("LOG_LEVEL") or "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        print(f"{PROG}: configuration error: GARMIN_SYNC_LOG_LEVEL: unknown level", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(level)
    try:
        code: int = args.handler(args, env)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SinkError as exc:
        print(f"{PROG}: sink error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())
