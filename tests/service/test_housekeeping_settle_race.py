"""Housekeeping's settle of abandoned MFA sign-ins racing a Login that starts a new one.

A user whose MFA challenge expired unanswered is MFA_PENDING until housekeeping settles the
row. If an admin logs the user in again and Garmin asks for a code, Login's transaction locks
the row, replaces the expired challenge with a live one and keeps the row MFA_PENDING. A
housekeeping pass whose UPDATE started before that commit waits for the row, and PostgreSQL
then re-checked only the row (EvalPlanQual): the EXISTS over challenges still runs in the
UPDATE's old snapshot, which did not hold the new challenge, so the pass settled the row to
NOT_CONNECTED while a live challenge waited for its code. GetStatus and ListSessions showed
NOT_CONNECTED (and the change log says so) although the sign-in is pending. Housekeeping now
locks the candidate rows first and settles them in a statement of its own, whose snapshot
holds the new challenge: the row stays MFA_PENDING.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.models import PendingMfa, SessionState
from auth_service.domain.policies import LoginSettings
from auth_service.services.housekeeping import Housekeeping
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from tests.service.test_submit_mfa_lock_order import _someone_waits_on_a_lock

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
USER = "settle-race"
PENDING = PendingMfa(
    cookies=[{"name": "SESSION", "value": "sso-cookie"}],
    login_params={"service": "x"},
    mfa_method="email",
    domain="garmin.com",
)


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_housekeeping_does_not_settle_a_sign_in_whose_new_challenge_commits_meanwhile(
    db_sessionmaker: sessionmaker[Session], keyring: Keyring, database_url: str
) -> None:
    store = SqlStore(db_sessionmaker, SecretBox(keyring))
    started = T0 - timedelta(minutes=20)
    # The first sign-in: MFA_PENDING, its challenge expired at T0 and nobody answered it.
    with store.transaction() as transaction:
        transaction.sessions.lock_or_create(USER, started)
        transaction.sessions.mark_mfa_pending(USER, started)
        transaction.challenges.add("digest-old", USER, PENDING, expires_at=T0, now=started)

    housekeeping = Housekeeping(store, FakeClock(T0), LoginSettings())
    failures: list[BaseException] = []

    def housekeep() -> None:
        try:
            housekeeping.run_once()
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    # A new Login's transaction, statement for statement (ConnectService.login, _ask_for_mfa).
    thread = threading.Thread(target=housekeep)
    with store.transaction() as login:
        login.sessions.lock_or_create(USER, T0)
        login.challenges.delete_for_user(USER)
        login.challenges.add(
            "digest-new", USER, PENDING, expires_at=T0 + timedelta(minutes=10), now=T0
        )
        login.sessions.mark_mfa_pending(USER, T0)
        thread.start()
        # The pass's settle has read the row (MFA_PENDING, no live challenge yet) and waits.
        assert _someone_waits_on_a_lock(database_url, time.monotonic() + 20)
    thread.join(timeout=30)
    assert not failures, repr(failures[0])

    with store.transaction() as read:
        challenge = read.challenges.find("digest-new")
        row = read.sessions.find(USER, T0 + timedelta(seconds=1))
    assert challenge is not None  # the new sign-in's challenge is live
    assert row is not None
    # Observed: NOT_CONNECTED (the pass settled the new sign-in as abandoned).
    assert row.state == SessionState.MFA_PENDING
