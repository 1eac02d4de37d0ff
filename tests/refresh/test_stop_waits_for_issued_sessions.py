"""A replica stopped gracefully (SIGTERM, as in every rolling deploy) while Garmin is issuing
it a session stores that session before it exits.

Before: the process exited with os._exit once the grace period was over. A DI refresh out
at Garmin was rotated there and never stored: the row kept the refresh token the rotation
killed, so the account was lost at its next refresh (invalid_grant). A service ticket being
exchanged was spent at Garmin and its session dropped. Keep-alive's refreshes were waited
for at stop, the RPCs' were not. Now the stop waits for every session between Garmin and
the database (auth_service/services/issued_in_flight.py), within one Garmin call's worst
case plus a margin. (From a read-only review of the refresher.)

Review of that fix found a stop that kept starting keep-alive rotations while it waited for
them (keep-alive was halted only after the wait): a stop during a keep-alive pass lasted the
pass, up to the bound. Keep-alive is now halted first, and a stopping replica asks Garmin for
no new session (ReplicaStopping), so the wait ends."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.errors import ReplicaStopping
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.fixtures.di_upstream import di_tokens
from tests.fixtures.emulators import scanned_emulator
from tests.fixtures.servers import CONSUMER_KEY, CONSUMER_SECRET, ROLE_TOKENS
from tests.leases import read_row, seed_active, stored_tokens
from tests.refresh import ASKER, DiAccounts, Replica
from tests.service.test_cli import CLI, base_env, free_port, run_cli

GRACE = 1.0
USERS = 40
LATENCY = 0.5
CONCURRENCY = 4
# Garmin answers after 8 s: inside the 10 s upstream timeout (and the 30 s whole-call
# budget), well after the 1 s grace.
GARMIN_DELAY = 8.0


@dataclasses.dataclass
class Stack:
    garmin: GarminEmulator
    env: dict[str, str]
    target: str
    db: sessionmaker[Session]
    box: SecretBox


@contextmanager
def stack(tmp_path: Path) -> Iterator[Stack]:
    with scanned_emulator(consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET) as garmin:
        target = f"127.0.0.1:{free_port()}"
        env = base_env(
            tmp_path,
            GARMIN_AUTH_LISTEN=target,
            GARMIN_AUTH_UPSTREAM_URL=garmin.url,
            GARMIN_AUTH_GRACE_PERIOD=str(GRACE),
        )
        assert run_cli("migrate", env=env).returncode == 0
        engine = create_engine_for(env["GARMIN_AUTH_DATABASE_URL"])
        box = SecretBox(Keyring.parse(env["GARMIN_AUTH_ENCRYPTION_KEYS"]))
        try:
            yield Stack(garmin, env, target, session_factory(engine), box)
        finally:
            engine.dispose()


@dataclasses.dataclass
class Stopped:
    """How a replica stopped: its exit code, its stderr, seconds from SIGTERM to exit."""

    code: int
    stderr: str
    took: float


def stop_while_garmin_answers(
    s: Stack, call: Callable[[pb_grpc.GarminAuthServiceStub], Any], path: str = DI_TOKEN_PATH
) -> Stopped:
    """Serve, start `call` with Garmin answering at `path` after GARMIN_DELAY, SIGTERM the
    replica once the request reached Garmin."""
    process = subprocess.Popen(
        [CLI, "serve"], env=s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with grpc.insecure_channel(s.target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
            before = s.garmin.request_count(path)
            s.garmin.fail_next(path, None, delay=GARMIN_DELAY)
            in_flight = call(pb_grpc.GarminAuthServiceStub(channel))
            deadline = time.monotonic() + 10
            while s.garmin.request_count(path) == before:
                assert time.monotonic() < deadline, "the call never reached Garmin"
                time.sleep(0.01)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            took = time.monotonic() - signalled
            in_flight.cancel()
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return Stopped(code, stderr, took)


def test_a_refresh_in_flight_at_sigterm_is_stored_not_lost(tmp_path: Path) -> None:
    email, user = "rolling@example.com", "rolling"
    with stack(tmp_path) as s:
        s.garmin.add_user(email, "pw")
        tokens = di_tokens(s.garmin.issue_di_tokens(email))
        now = datetime.now(UTC)
        # The access token expires during a 5-minute lease: the grant refreshes first.
        tokens = dataclasses.replace(
            tokens,
            oauth2=dataclasses.replace(tokens.oauth2, expires_at=now + timedelta(seconds=60)),
        )
        seed_active(s.db, s.box, user, tokens, now)

        stopped = stop_while_garmin_answers(
            s,
            lambda stub: stub.LeaseSession.future(
                pb.LeaseSessionRequest(user_id=user, holder="w1"),
                metadata=(("authorization", f"Bearer {ROLE_TOKENS['worker']}"),),
                timeout=30,
            ),
        )
        assert stopped.code == 0, stopped.stderr
        # Garmin finishes the rotation it was sent, whether or not anyone still listens.
        deadline = time.monotonic() + GARMIN_DELAY + 5
        while s.garmin.di_refresh_count(email) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.garmin.di_refresh_count(email) == 1, "Garmin never rotated the token"
        stored = stored_tokens(s.db, s.box, user)
        assert stored is not None
        assert stored.oauth2.refresh_token != tokens.oauth2.refresh_token, (
            "after SIGTERM the row still holds the refresh token Garmin's rotation killed"
        )
        assert stored.oauth2.refresh_token in s.garmin.live_refresh_tokens(email)
        assert "Garmin session(s) to be stored" in stopped.stderr


def test_a_ticket_exchange_in_flight_at_sigterm_is_stored(tmp_path: Path) -> None:
    email, user = "browser@example.com", "browser"
    with stack(tmp_path) as s:
        s.garmin.add_user(email, "pw")
        ticket = s.garmin.issue_ticket(email)

        stopped = stop_while_garmin_answers(
            s,
            lambda stub: stub.ExchangeServiceTicket.future(
                pb.ExchangeServiceTicketRequest(user_id=user, service_ticket=ticket),
                metadata=(("authorization", f"Bearer {ROLE_TOKENS['admin']}"),),
                timeout=30,
            ),
        )
        assert stopped.code == 0, stopped.stderr
        stored = stored_tokens(s.db, s.box, user)
        assert stored is not None, "the session Garmin issued on the spent ticket was dropped"
        assert stored.oauth2.refresh_token in s.garmin.live_refresh_tokens(email)


def test_a_stopping_replica_claims_no_refresh_and_asks_garmin_nothing(
    accounts: DiAccounts, db_sessionmaker: sessionmaker[Session], replicas: tuple[Replica, Replica]
) -> None:
    """A handler of a call cancelled at the grace period's end may still run: once the stop
    waits, it claims nothing (a claim left behind would hold the session ~11 minutes) and
    Garmin is not asked (the exit would drop the pair)."""
    replica, _ = replicas
    accounts.seed("late", access_in=timedelta(seconds=30))
    version = read_row(db_sessionmaker, "late").session_version
    replica.refresher.in_flight.close()
    with pytest.raises(ReplicaStopping):
        replica.refresher.refresh("late", version, ASKER)
    row = read_row(db_sessionmaker, "late")
    assert row.refresh_claimed_until is None
    assert row.session_version == version
    assert accounts.refreshes("late") == 0


def test_stop_does_not_keep_starting_keepalive_rotations(tmp_path: Path) -> None:
    with stack(tmp_path) as s:
        now = datetime.now(UTC)
        for n in range(USERS):
            email = f"ka{n}@example.com"
            s.garmin.add_user(email, "pw")
            tokens = di_tokens(s.garmin.issue_di_tokens(email))
            # Its refresh token dies within the keep-alive window: a candidate.
            tokens = dataclasses.replace(
                tokens,
                oauth2=dataclasses.replace(
                    tokens.oauth2, refresh_token_expires_at=now + timedelta(days=1)
                ),
            )
            seed_active(s.db, s.box, f"ka{n}", tokens, now)
        env = dict(
            s.env,
            GARMIN_AUTH_GRACE_PERIOD="0",
            GARMIN_AUTH_KEEPALIVE_INTERVAL="1",
            GARMIN_AUTH_KEEPALIVE_RATE="50",
            GARMIN_AUTH_REFRESH_CONCURRENCY=str(CONCURRENCY),
        )
        s.garmin.latency_seconds = LATENCY
        process = subprocess.Popen(
            [CLI, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            with grpc.insecure_channel(s.target) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                health = health_pb2_grpc.HealthStub(channel)
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
            deadline = time.monotonic() + 20
            while s.garmin.request_count(DI_TOKEN_PATH) == 0:
                assert time.monotonic() < deadline, "keep-alive never reached Garmin"
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            at_sigterm = s.garmin.request_count(DI_TOKEN_PATH)
            code = process.wait(timeout=120)
            took = time.monotonic() - signalled
            _, stderr = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        assert code == 0, stderr
        started_after = s.garmin.request_count(DI_TOKEN_PATH) - at_sigterm
        # Only the rotations already under way at SIGTERM (one per refresh slot, and a
        # few being started meanwhile) should be waited for.
        assert started_after <= 2 * CONCURRENCY, (
            f"{started_after} keep-alive rotations started at Garmin after SIGTERM; "
            f"the stop took {took:.1f}s"
        )
