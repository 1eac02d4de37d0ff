"""Helpers of the reliability tests (issue 8): service replicas as real processes (so they can
be SIGKILLed), answers decoded to (code, reason), fake but well-formed Garmin sessions, clocks
that lie, and direct reads of the service's tables for the invariants.

Every helper here stops by itself: waits take a timeout, processes are killed at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from auth_service.domain.models import GarminTokens, OAuth1Token, OAuth2Token
from auth_service.storage.models import (
    GarminAuditEvent,
    GarminAuthenticationState,
    GarminMfaChallenge,
)
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_client.session_proto import tokens_to_proto
from tests.fixtures.servers import CONSUMER_KEY, CONSUMER_SECRET, ROLE_TOKENS, failure_of

SERVICE_CLI = str(Path(sys.executable).with_name("garmin-auth-service"))
SERVING: int = int(health_pb2.HealthCheckResponse.SERVING)
NOT_SERVING: int = int(health_pb2.HealthCheckResponse.NOT_SERVING)
PASSWORD = "correct horse battery staple"
# Reconnect at once when a replica comes (back): the default backoff would hide seconds.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def bearer(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {ROLE_TOKENS[role]}"),)


# --- answers -------------------------------------------------------------------------------


def outcome_of(error: grpc.RpcError) -> tuple[str, str]:
    """(code name, ErrorInfo reason) of a failed call; reason "" when there is no ErrorInfo
    (an answer gRPC made up itself, e.g. an unreachable server)."""
    failure = failure_of(error)
    return failure.code.name, failure.reason


def answer_of(call: Callable[[], Any]) -> tuple[tuple[str, str], Any]:
    """Run one RPC: ((code, reason), response or None)."""
    try:
        return ("OK", ""), call()
    except grpc.RpcError as error:
        return outcome_of(error), None


# --- fake sessions ---------------------------------------------------------------------------


def fake_tokens(
    marker: str, *, expires_at: datetime | None = None, account: str | None = None
) -> GarminTokens:
    """A well-formed Garmin session that Garmin never issued (for tests that never call
    Garmin with it). `marker` makes it recognisable in the database afterwards; `account`
    (default: the marker) names its OAuth1 token, which a refresh of it keeps."""
    expires = expires_at or datetime.now(UTC) + timedelta(days=365)
    owner = account or marker
    return GarminTokens(
        oauth1=OAuth1Token(oauth_token=f"oauth1-{owner}", oauth_token_secret=f"secret-{owner}"),
        oauth2=OAuth2Token(
            scope="CONNECT_READ",
            jti=f"jti-{marker}",
            token_type="Bearer",
            access_token=f"access-{marker}",
            refresh_token=f"refresh-{marker}",
            expires_at=expires,
            refresh_token_expires_at=expires + timedelta(days=30),
        ),
    )


def session_proto(
    marker: str, *, expires_at: datetime | None = None, account: str | None = None
) -> pb.GarminSession:
    return tokens_to_proto(fake_tokens(marker, expires_at=expires_at, account=account))


# --- clocks ----------------------------------------------------------------------------------


@dataclass
class SkewedClock:
    """This machine's clock, off by `skew` (a replica whose NTP broke, or time moved on)."""

    skew: timedelta

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew


# --- the service's tables, read directly ----------------------------------------------------


@contextmanager
def reader(database_url: str) -> Iterator[Session]:
    """A short-lived session on the service's database (its own connection, no pool)."""
    engine: Engine = create_engine(database_url, poolclass=NullPool)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def stored_row(database_url: str, user_id: str) -> GarminAuthenticationState | None:
    with reader(database_url) as session:
        row = session.get(GarminAuthenticationState, user_id)
        if row is not None:
            session.expunge(row)
        return row


def challenges_of(database_url: str, user_id: str) -> list[GarminMfaChallenge]:
    with reader(database_url) as session:
        rows = list(
            session.scalars(select(GarminMfaChallenge).where(GarminMfaChallenge.user_id == user_id))
        )
        session.expunge_all()
        return rows


def audit_events(database_url: str) -> list[GarminAuditEvent]:
    with reader(database_url) as session:
        rows = list(session.scalars(select(GarminAuditEvent).order_by(GarminAuditEvent.id)))
        session.expunge_all()
        return rows


# --- replicas as processes -------------------------------------------------------------------


def service_env(
    *,
    database_url: str,
    keyring_value: str,
    callers_file: Path,
    upstream_url: str,
    listen: str,
    **extra: str,
) -> dict[str, str]:
    """What `garmin-auth-service serve` reads, on top of this environment minus GARMIN_AUTH_*."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GARMIN_AUTH_")}
    env.update(
        GARMIN_AUTH_DATABASE_URL=database_url,
        GARMIN_AUTH_LISTEN=listen,
        GARMIN_AUTH_ENCRYPTION_KEYS=keyring_value,
        GARMIN_AUTH_CALLERS_FILE=str(callers_file),
        GARMIN_AUTH_OAUTH_CONSUMER_KEY=CONSUMER_KEY,
        GARMIN_AUTH_OAUTH_CONSUMER_SECRET=CONSUMER_SECRET,
        GARMIN_AUTH_UPSTREAM_URL=upstream_url,
        GARMIN_AUTH_GRACE_PERIOD="0",
        GARMIN_AUTH_LOGIN_LIMIT="1000",
        # Probes are played on the main port; several replicas run side by side.
        GARMIN_AUTH_HEALTH_LISTEN="off",
    )
    env.update(extra)
    return env


@dataclass
class ReplicaProcess:
    """`garmin-auth-service serve` in its own process, its log in a file."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return self.env["GARMIN_AUTH_LISTEN"]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ReplicaProcess:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [SERVICE_CLI, "serve"], env=self.env, stdout=log_file, stderr=log_file
            )
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target, options=FAST_RECONNECT)
        return self._channel

    @property
    def stub(self) -> pb_grpc.GarminAuthServiceStub:
        return pb_grpc.GarminAuthServiceStub(self.channel)

    def call(self, rpc: str, request: Any, role: str = "admin", timeout: float = 15) -> Any:
        return getattr(self.stub, rpc)(request, metadata=bearer(role), timeout=timeout)

    def health(self, timeout: float = 1.0, service: str = "readiness") -> int | None:
        """The health status of `service` (readiness: follows the database; liveness: the
        process answers), or None when the process does not answer."""
        try:
            answer = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return None
        return int(answer.status)

    def wait_serving(self, timeout: float = 45) -> None:
        def serving() -> bool:
            if not self.alive:
                raise AssertionError(f"the replica exited early:\n{self.log_tail()}")
            return self.health(0.5) == SERVING

        wait_until(serving, timeout, f"replica {self.target} to be SERVING", interval=0.1)

    def kill(self) -> None:
        """SIGKILL: no graceful stop, no cleanup, in-flight calls cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


# Starts a replica process: (database_url, *, wait=True, **GARMIN_AUTH_* overrides).
StartReplica = Callable[..., ReplicaProcess]


# --- figures for docs/RELIABILITY.md ----------------------------------------------------------

FIGURES_ENV = "GARMIN_AUTH_RELIABILITY_FIGURES"


def record_figures(test: str, **figures: Any) -> None:
    """Append one JSON line of what a test did (faults injected, calls made, ...) to the file
    named by GARMIN_AUTH_RELIABILITY_FIGURES, when set; the report's figures come from it."""
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps({"test": test, **figures}, sort_keys=True, default=str) + "\n")
