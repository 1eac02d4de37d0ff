"""A database failure while recording a 429 the call went on past (garth's embed page,
auth_service.domain.passed_429s) releases the half-open breaker's probe; it never closes it.

Before: rate_limited(call_ended=False) marked the probe settled only once the record had
committed. When the record failed (here: the sso breaker row locked past lock_timeout, a
real lock), calling() then ran answered(), which CLOSED the sso breaker for every account
and replica although the probe's answer was Garmin's 429, and logged "calls resume". Now
such an endpoint is released as one not reached: the next call probes, as after any other
lost record (the breaker stays half-open). The control (no lock) opens the breaker again
for Garmin's 600 s. (From a read-only review of the gate.)"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import EMBED_PATH, PREAUTHORIZED_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.service.test_login import PASSWORD

pytestmark = pytest.mark.timeout(90)

LIMITS = GarminLimitSettings(breaker_threshold=1, breaker_window_seconds=60)


@pytest.fixture
def backend() -> str:
    """PostgreSQL only: the fault is a row lock past lock_timeout."""
    return "postgresql"


def _lock_waits(conn: Any, name: str | None) -> set[Any]:
    """When the service's statements now waiting for a lock started (one per statement)."""
    rows = conn.execute(
        text(
            "SELECT query_start FROM pg_stat_activity WHERE datname = :d "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ),
        {"d": name},
    ).all()
    return {row[0] for row in rows}


def _until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _sso_breaker(admin: Any) -> Any:
    with admin.connect() as conn:
        return conn.execute(
            text("SELECT open_until, probe_until FROM garmin_endpoint_breaker WHERE endpoint='sso'")
        ).one()


@pytest.mark.parametrize("record_fails", [False, True], ids=["control", "record-lost"])
def test_a_lost_record_of_the_probes_429_does_not_close_the_breaker(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str, record_fails: bool
) -> None:
    admin = create_engine(database_url, poolclass=NullPool)
    name = make_url(database_url).database
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET lock_timeout = '1s'"))
    try:
        replica = service_factory.start(login_flow=LoginFlow.GARTH, limits=LIMITS)
        for user in ("bob", "ada", "cy"):
            garmin.add_user(f"{user}@example.com", PASSWORD)

        # bob's sign-in goes on past the embed page's 429 (1 s): the sso breaker opens.
        garmin.fail_next(EMBED_PATH, 429, retry_after=1)
        replica.call(
            "Login", pb.LoginRequest(user_id="bob", email="bob@example.com", password=PASSWORD)
        )
        assert _sso_breaker(admin).open_until is not None
        time.sleep(1.5)  # half-open: ada's sign-in is the probe

        garmin.fail_next(EMBED_PATH, 429, retry_after=600)
        garmin.fail_next(PREAUTHORIZED_PATH, None, delay=1.0)  # answered, slowly
        outcome: list[Any] = []

        def login() -> None:
            request = pb.LoginRequest(user_id="ada", email="ada@example.com", password=PASSWORD)
            try:
                outcome.append(replica.call("Login", request, timeout=30))
            except grpc.RpcError as error:
                outcome.append(error)

        thread = threading.Thread(target=login)
        thread.start()
        _until(lambda: garmin.request_count(EMBED_PATH) == 2)
        if record_fails:
            with admin.connect() as holder, admin.connect() as watcher:
                holder.execute(text("SET lock_timeout = '10s'"))
                holder.execute(
                    text("SELECT 1 FROM garmin_endpoint_breaker WHERE endpoint='sso' FOR UPDATE")
                ).all()
                # The 429's record waits for the row and fails (lock_timeout); the settle
                # that follows waits for it in turn: let that one through.
                # (lock_timeout 1 s: the record fails at 1 s, the settle would at 2 s.)
                _until(lambda: len(_lock_waits(watcher, name)) == 1)
                time.sleep(1.4)
                holder.rollback()
        thread.join(30)
        assert not isinstance(outcome[0], grpc.RpcError)  # Garmin issued the tokens

        breaker = _sso_breaker(admin)
        assert breaker.open_until is not None, (
            "the sso breaker was closed by a probe whose answer was Garmin's 429"
        )
        assert breaker.probe_until is None  # the probe is free for the next call
        before = garmin.request_count(EMBED_PATH)
        with contextlib.suppress(grpc.RpcError):
            replica.call(
                "Login", pb.LoginRequest(user_id="cy", email="cy@example.com", password=PASSWORD)
            )
        if record_fails:
            # The record is lost: cy's sign-in is the next probe (the breaker half-open).
            assert garmin.request_count(EMBED_PATH) == before + 1
        else:
            # Recorded: the breaker is open for Garmin's 600 s and cy waits without a call.
            assert garmin.request_count(EMBED_PATH) == before
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" RESET lock_timeout'))
        admin.dispose()
