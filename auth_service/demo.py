"""`garmin-auth-service demo`: the whole job on embedded defaults, for a first look.

It keeps its state in one folder (default ./demo-data): a development encryption key and
caller tokens (made once, printed), a SQLite database, and a Garmin emulator as upstream
unless GARMIN_AUTH_UPSTREAM_URL points elsewhere. It starts the service, connects a demo user
through Login + MFA over gRPC, runs `garmin-sync-worker` once into demo-data/out and shows
what it synced, then keeps serving (or stops, with --once) so you can try the grpcurl
examples it prints.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import grpc

from auth_service.api.callers import token_sha256
from auth_service.config import load_settings
from auth_service.crypto import Keyring
from auth_service.operator_commands import NO_PROXY_OPTIONS
from auth_service.server import RunningServer, build_application, start_server
from auth_service.storage.schema import upgrade_to_head
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from garmin_emulator import GarminEmulator

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - the emulator's demo account
DEMO_MFA_CODE = "123456"
DEMO_USER_ID = "demo-user"
# The accounts the README's grpcurl examples use: (email, password, MFA code or None).
BOB_EMAIL = "bob@example.com"
README_ACCOUNTS = (
    ("alice@example.com", "alice-password", "123456"),
    (BOB_EMAIL, "bob-password", None),
)
# How long the demo's service tickets last (Garmin's: about a minute), so one can be pasted.
DEMO_TICKET_SECONDS = 3600.0
ROLES = ("admin", "worker", "viewer")


@dataclass(frozen=True)
class DemoState:
    """What the demo keeps between runs (development values only)."""

    encryption_keys: str
    tokens: dict[str, str]

    @classmethod
    def load_or_create(cls, folder: Path) -> DemoState:
        path = folder / "dev-secrets.json"
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["encryption_keys"], data["tokens"])
        state = cls(
            encryption_keys=Keyring.generate_key_value("dev"),
            tokens={role: f"dev-{role}-{secrets.token_urlsafe(18)}" for role in ROLES},
        )
        folder.mkdir(parents=True, exist_ok=True)
        # Created owner-only: written first and chmod-ed after, the key and tokens were
        # readable by every local user (umask 022) until the chmod.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump({"encryption_keys": state.encryption_keys, "tokens": state.tokens}, file)
        return state

    def write_callers_file(self, path: Path) -> Path:
        path.write_text(
            "".join(
                f'[[callers]]\nname = "dev-{role}"\ntoken_sha256 = "{token_sha256(token)}"\n'
                f'roles = ["{role}"]\n\n'
                for role, token in self.tokens.items()
            ),
            encoding="utf-8",
        )
        return path


@dataclass(frozen=True)
class Consumer:
    """The OAuth1 consumer the service signs Garmin requests with."""

    key: str
    secret: str


def _environment(
    folder: Path, state: DemoState, upstream_url: str | None, consumer: Consumer
) -> dict[str, str]:
    env = {
        "GARMIN_AUTH_DATABASE_URL": f"sqlite:///{folder / 'garmin-auth.sqlite3'}",
        "GARMIN_AUTH_ENCRYPTION_KEYS": state.encryption_keys,
        "GARMIN_AUTH_CALLERS_FILE": str(state.write_callers_file(folder / "callers.toml")),
        "GARMIN_AUTH_LISTEN": os.environ.get("GARMIN_AUTH_LISTEN", "127.0.0.1:50051"),
        "GARMIN_AUTH_OAUTH_CONSUMER_KEY": consumer.key,
        "GARMIN_AUTH_OAUTH_CONSUMER_SECRET": consumer.secret,
        # The demo's main port answers health; no second port to collide on.
        "GARMIN_AUTH_HEALTH_LISTEN": "off",
        # Every run signs demo-user in again (its emulator is a new Garmin each time), and the
        # login throttle lives in ./demo-data: at the default 5 an hour, the sixth `--once`
        # within an hour was refused LOGIN_RATE_LIMITED.
        "GARMIN_AUTH_LOGIN_LIMIT": "1000",
    }
    if upstream_url:
        env["GARMIN_AUTH_UPSTREAM_URL"] = upstream_url
    # What the operator set wins over the demo's defaults.
    env.update({k: v for k, v in os.environ.items() if k.startswith("GARMIN_AUTH_")})
    return env


def connect_demo_user(target: str, admin_token: str, out: TextIO) -> None:
    """Login + MFA over gRPC, as an application's backend would do it."""
    metadata = (("authorization", f"Bearer {admin_token}"),)
    # Never through a proxy: the admin token and the password would reach its host in clear.
    with grpc.insecure_channel(target, options=NO_PROXY_OPTIONS) as channel:
        stub = pb_grpc.GarminAuthServiceStub(channel)
        answer = stub.Login(
            pb.LoginRequest(user_id=DEMO_USER_ID, email=DEMO_EMAIL, password=DEMO_PASSWORD),
            metadata=metadata,
            timeout=30,
        )
        print(f"Login({DEMO_USER_ID}) -> {pb.LoginOutcome.Name(answer.outcome)}", file=out)
        if answer.outcome != pb.LOGIN_OUTCOME_MFA_REQUIRED:
            return
        print(
            f"  Garmin sent a code by {answer.mfa_method}; the emulator's is {DEMO_MFA_CODE}",
            file=out,
        )
        done = stub.SubmitMfa(
            pb.SubmitMfaRequest(mfa_challenge_id=answer.mfa_challenge_id, code=DEMO_MFA_CODE),
            metadata=metadata,
            timeout=30,
        )
        print(f"SubmitMfa -> {pb.SessionState.Name(done.status.state)}", file=out)


def run_worker_once(
    target: str, state: DemoState, upstream_url: str, folder: Path, out: TextIO
) -> int:
    """Run the real worker command, as a CronJob would, and show what it wrote."""
    out_dir = folder / "out"
    command = [
        str(Path(sys.executable).parent / "garmin-sync-worker"),
        "run",
        "--user",
        DEMO_USER_ID,
        "--out",
        str(out_dir),
        "--with-files",
    ]
    env = {
        **os.environ,
        "GARMIN_SYNC_AUTH_TARGET": target,
        "GARMIN_SYNC_AUTH_TOKEN": state.tokens["worker"],
        "GARMIN_SYNC_UPSTREAM_URL": upstream_url,
    }
    print(
        f"\n$ garmin-sync-worker run --user {DEMO_USER_ID} --out {out_dir} --with-files", file=out
    )
    result = subprocess.run(  # noqa: S603 - our own console script, fixed arguments
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    print(result.stdout.rstrip(), file=out)
    files = sorted((out_dir / DEMO_USER_ID / "activities").glob("*"))
    print(f"exit {result.returncode}; {len(files)} files in {out_dir / DEMO_USER_ID}:", file=out)
    for path in files:
        print(f"  {path.name}  ({path.stat().st_size} bytes)", file=out)
    if result.returncode != 0:
        print(result.stderr.rstrip(), file=out)
    return result.returncode


def add_demo_accounts(emulator: GarminEmulator) -> str:
    """The demo's Garmin accounts: its own user, with activities, and the README's grpcurl
    examples' alice (MFA) and bob. Returns a service ticket for bob, as Garmin's sign-in page
    would hand it to his browser; the demo's tickets last an hour, so it can be pasted."""
    emulator.add_user(DEMO_EMAIL, DEMO_PASSWORD, mfa=True, mfa_code=DEMO_MFA_CODE)
    emulator.add_activities(DEMO_EMAIL, 5)
    for email, password, mfa_code in README_ACCOUNTS:
        emulator.add_user(email, password, mfa=mfa_code is not None, mfa_code=mfa_code)
    emulator.di.ticket_ttl_seconds = DEMO_TICKET_SECONDS
    return emulator.issue_ticket(BOB_EMAIL)


def _print_examples(
    running: RunningServer,
    state: DemoState,
    folder: Path,
    out: TextIO,
    ticket: str | None,
    *,
    once: bool,
    emulated: bool,
) -> None:
    target = f"127.0.0.1:{running.port}"
    # The URL is not echoed: its user-info part may hold a password.
    upstream = "emulator upstream" if emulated else "upstream: GARMIN_AUTH_UPSTREAM_URL"
    what = f"SQLite, development key, {upstream}"
    serving = (
        f"garmin-auth-service served on {target} ({what}); with --once it stops now: run the "
        "demo without it to try these."
        if once
        else f"garmin-auth-service is serving on {target} ({what})."
    )
    ending = "" if once else "\nStop with Ctrl-C."
    admin = state.tokens["admin"]
    readme = (
        f"""
For the README's grpcurl examples (its emulator knows alice and bob; TICKET is the one
Garmin's sign-in page would give bob's browser, good for an hour):
  export ADMIN_TOKEN={admin} WORKER_TOKEN={state.tokens["worker"]} TICKET={ticket}"""
        if ticket is not None
        else ""
    )
    print(
        f"""
{serving}
Development caller tokens (kept in {folder / "dev-secrets.json"}):
  admin  {state.tokens["admin"]}
  worker {state.tokens["worker"]}
  viewer {state.tokens["viewer"]}
Try:
  grpcurl -plaintext -H 'authorization: Bearer {admin}' {target} list
  grpcurl -plaintext -H 'authorization: Bearer {admin}' {target} grpc.health.v1.Health/Check
  grpcurl -plaintext -H 'authorization: Bearer {admin}' \\
      -d '{{"user_id": "{DEMO_USER_ID}"}}' {target} garmin_auth.v1.GarminAuthService/GetStatus"""
        f"""{readme}{ending}""",
        file=out,
        flush=True,
    )


def run_demo(folder: Path, *, once: bool, out: TextIO = sys.stdout) -> int:
    # Imported here, not at the top: the emulator is not part of the product (the image does
    # not ship it); the demo runs from a source checkout, where it is present.
    from garmin_emulator import (  # noqa: PLC0415
        DEFAULT_CONSUMER_KEY,
        DEFAULT_CONSUMER_SECRET,
        GarminEmulator,
    )

    consumer = Consumer(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET)
    state = DemoState.load_or_create(folder)
    upstream_url = os.environ.get("GARMIN_AUTH_UPSTREAM_URL")
    emulator: GarminEmulator | None = None
    bob_ticket: str | None = None
    if not upstream_url:
        emulator = GarminEmulator().start()
        bob_ticket = add_demo_accounts(emulator)
    try:
        settings = load_settings(
            _environment(
                folder, state, upstream_url or (emulator.url if emulator else None), consumer
            )
        )
        upgrade_to_head(settings.database_url)
        running = start_server(build_application(settings))
        try:
            if emulator is not None:
                target = f"127.0.0.1:{running.port}"
                try:
                    connect_demo_user(target, state.tokens["admin"], out)
                except grpc.RpcError as error:
                    # One line, as every other refusal of ours: code and message, no trace.
                    print(f"demo: sign-in failed: {error.code().name} {error.details()}", file=out)
                    return 1
                if run_worker_once(target, state, emulator.url, folder, out) != 0:
                    return 1
            _print_examples(
                running, state, folder, out, bob_ticket, once=once, emulated=emulator is not None
            )
            if not once:
                threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            running.stop(grace=1)
    finally:
        if emulator is not None:
            emulator.stop()
    return 0
