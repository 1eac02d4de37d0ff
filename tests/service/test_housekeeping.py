"""Housekeeping that runs: expired MFA challenges and stale login counters are deleted and
abandoned MFA settles, in the background, by one replica at a time; reads never write."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from auth_service.config import Settings
from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.models import PendingMfa, SessionState
from auth_service.domain.policies import LoginSettings
from auth_service.domain.signin_accounts import SignInKeys
from auth_service.server import build_application
from auth_service.services.housekeeping import LOCK_NAME, Housekeeping, HousekeepingReport
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.models import (
    GarminAuthenticationState,
    GarminLoginThrottle,
    GarminMfaChallenge,
)
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from tests.fixtures.servers import ServiceFactory

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)
LOGIN = LoginSettings(window_seconds=WINDOW.total_seconds())
PENDING = PendingMfa(
    cookies=[{"name": "SESSION", "value": "sso-cookie"}],
    login_params={"service": "x"},
    mfa_method="email",
    domain="garmin.com",
)


def seed(store: SqlStore, now: datetime) -> None:
    """Two users waiting for their MFA code (one challenge expired at `now`, one live) and two
    login counters (one whose window ended, one current)."""
    started = now - timedelta(minutes=20)
    with store.transaction() as transaction:
        for user_id, expires_at in (("expired", now), ("waiting", now + timedelta(minutes=5))):
            transaction.sessions.lock_or_create(user_id, started)
            transaction.sessions.mark_mfa_pending(user_id, started)
            transaction.challenges.add(
                f"digest-{user_id}", user_id, PENDING, expires_at=expires_at, now=started
            )
        transaction.throttle.consume(SignInKeys("stale"), now - WINDOW, limit=5, window=WINDOW)
        transaction.throttle.consume(SignInKeys("current"), started, limit=5, window=WINDOW)


def stored(db: sessionmaker[Session]) -> tuple[list[str], list[str], dict[str, SessionState]]:
    """Challenges and counters by user, and the sessions' stored states."""
    with db() as session:
        challenges = session.scalars(select(GarminMfaChallenge.user_id).order_by("user_id"))
        counters = session.scalars(select(GarminLoginThrottle.user_id).order_by("user_id"))
        states = session.execute(
            select(GarminAuthenticationState.user_id, GarminAuthenticationState.state)
        )
        return list(challenges), list(counters), {row.user_id: row.state for row in states}


@pytest.fixture
def store(db_sessionmaker: sessionmaker[Session], keyring: Keyring) -> SqlStore:
    return SqlStore(db_sessionmaker, SecretBox(keyring))


def test_a_pass_deletes_what_expired_and_keeps_what_lives(
    store: SqlStore, db_sessionmaker: sessionmaker[Session]
) -> None:
    seed(store, T0)
    report = Housekeeping(store, FakeClock(T0), LOGIN).run_once()
    assert report == HousekeepingReport(
        ran=True, challenges_deleted=1, sessions_settled=1, throttles_deleted=1
    )
    assert stored(db_sessionmaker) == (
        ["waiting"],
        ["current"],
        {"expired": SessionState.NOT_CONNECTED, "waiting": SessionState.MFA_PENDING},
    )
    # A second pass finds nothing left to do.
    assert Housekeeping(store, FakeClock(T0), LOGIN).run_once() == HousekeepingReport(ran=True)


class Writes:
    """Records the writing statements an engine sends while installed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []

    def __call__(self, *args: object) -> None:
        statement = str(args[2]).lstrip().upper()
        if statement.startswith(("INSERT", "UPDATE", "DELETE")):
            self.statements.append(statement)

    def __enter__(self) -> Writes:
        event.listen(self.engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self)


def test_list_sessions_and_get_status_show_abandoned_mfa_settled_without_writing(
    store: SqlStore, db_sessionmaker: sessionmaker[Session], service_settings: Settings
) -> None:
    seed(store, T0)
    application = build_application(service_settings, clock=FakeClock(T0))
    sessions = application.use_cases.sessions
    try:
        with Writes(application.engine) as writes:
            listed = sessions.list_sessions(page_size=0, page_token="", state=None)
            settled = sessions.list_sessions(
                page_size=0, page_token="", state=SessionState.NOT_CONNECTED
            )
            pending = sessions.list_sessions(
                page_size=0, page_token="", state=SessionState.MFA_PENDING
            )
            status = sessions.get_status("expired", validate=False)
        assert writes.statements == []
        assert {view.user_id: view.state for view in listed.sessions} == {
            "expired": SessionState.NOT_CONNECTED,
            "waiting": SessionState.MFA_PENDING,
        }
        assert [view.user_id for view in settled.sessions] == ["expired"]
        assert [view.user_id for view in pending.sessions] == ["waiting"]
        assert status.state == SessionState.NOT_CONNECTED
        # Stored as it was: writing it is housekeeping's job.
        assert stored(db_sessionmaker)[2]["expired"] == SessionState.MFA_PENDING
    finally:
        application.engine.dispose()


@pytest.mark.postgres
def test_of_two_replicas_passing_at_once_one_does_the_work(
    pg_database_url: str, keyring: Keyring
) -> None:
    engines = [create_engine_for(pg_database_url) for _ in range(2)]
    first, second = (SqlStore(session_factory(e), SecretBox(keyring)) for e in engines)
    try:
        seed(first, T0)
        with first.exclusive(LOCK_NAME) as held:
            # The first replica's pass is in progress: the second skips its own.
            assert held is not None
            assert Housekeeping(second, FakeClock(T0), LOGIN).run_once() == HousekeepingReport(
                ran=False
            )
        assert stored(session_factory(engines[0]))[0] == ["expired", "waiting"]
        # Once the first pass has ended, the next one runs.
        assert Housekeeping(second, FakeClock(T0), LOGIN).run_once().challenges_deleted == 1
    finally:
        for engine in engines:
            engine.dispose()


def test_the_server_runs_housekeeping_in_the_background(
    service_factory: ServiceFactory, database_url: str, keyring: Keyring
) -> None:
    engine = create_engine_for(database_url)
    db = session_factory(engine)
    try:
        seed(SqlStore(db, SecretBox(keyring)), datetime.now(UTC))
        replica = service_factory.start(housekeeping_interval_seconds=0.1)
        deadline = time.monotonic() + 10
        while stored(db)[0] != ["waiting"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored(db)[:2] == (["waiting"], ["current"])
        service_factory.replicas.remove(replica)
        replica.stop()
        assert not any(t.name == "housekeeping" for t in threading.enumerate())
    finally:
        engine.dispose()
