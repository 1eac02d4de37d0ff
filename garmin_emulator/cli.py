"""`python -m garmin_emulator`: run the emulator in its own process, for the demo and the
benchmarks. It prints its URL, then serves until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
from pathlib import Path

from garmin_emulator.emulator import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, GarminEmulator


def _parse_user(spec: str) -> tuple[str, str, str | None]:
    email, sep, rest = spec.partition(":")
    if not sep or not email or not rest:
        raise argparse.ArgumentTypeError("expected EMAIL:PASSWORD[:MFA_CODE]")
    password, _, code = rest.partition(":")
    return email, password, code or None


def _read_users(path: str) -> list[tuple[str, str, str | None]]:
    """EMAIL:PASSWORD[:MFA_CODE] per line; blank lines and lines starting with # are skipped."""
    try:
        specs = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None
    return [_parse_user(spec) for spec in specs if spec and not spec.startswith("#")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m garmin_emulator",
        description="Run the Garmin emulator (SSO, OAuth, Connect API) until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--consumer-key", default=DEFAULT_CONSUMER_KEY)
    parser.add_argument("--consumer-secret", default=DEFAULT_CONSUMER_SECRET)
    parser.add_argument("--access-token-expires-in", type=int, default=3600)
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        type=_parse_user,
        metavar="EMAIL:PASSWORD[:MFA_CODE]",
        help="an account (repeatable); with an MFA code the login needs it",
    )
    parser.add_argument(
        "--users-from-file",
        type=_read_users,
        default=[],
        metavar="PATH",
        help="accounts, one EMAIL:PASSWORD[:MFA_CODE] per line (added to --user)",
    )
    parser.add_argument("--activities", type=int, default=5, help="activities per account")
    parser.add_argument(
        "--latency", type=float, default=0.0, metavar="SECONDS", help="added to every answer"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    emulator = GarminEmulator(
        consumer_key=args.consumer_key,
        consumer_secret=args.consumer_secret,
        access_token_expires_in=args.access_token_expires_in,
        host=args.host,
        port=args.port,
    )
    emulator.latency_seconds = max(0.0, args.latency)
    users = [*args.user, *args.users_from_file] or [("demo@example.com", "demo-password", None)]
    for email, password, code in users:
        emulator.add_user(email, password, mfa=code is not None, mfa_code=code)
        emulator.add_activities(email, args.activities)
    with emulator:
        # The demo's one output: the URL to point GARMIN_AUTH_UPSTREAM_URL at.
        print(emulator.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0
