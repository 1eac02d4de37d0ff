"""DeleteSession racing a Login that asks for MFA (PostgreSQL, READ COMMITTED).

DeleteSession used to delete the user's challenges BEFORE it locked the user's row. A Login
that held the row lock and had just inserted its challenge committed while DeleteSession
waited for the lock: the DELETE had run on a snapshot without the new challenge, so the
session ended NOT_CONNECTED while the challenge of the login it was meant to cancel stayed
usable (SubmitMfa would then connect the deleted user). It now locks the row first.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select

from auth_service.crypto import Keyring
from auth_service.domain.models import PendingMfa
from auth_service.storage.database import session_factory
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import Replica

USER = "racy"


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_delete_session_after_an_mfa_login_leaves_no_usable_challenge(
    service: Replica, database_url: str, keyring: Keyring
) -> None:
    engine = create_engine(database_url)
    store = SqlStore(session_factory(engine), SecretBox(keyring))
    now = datetime.now(UTC)
    with store.transaction() as tx:  # the user is known (a row exists)
        tx.sessions.lock_or_create(USER, now)

    pending = PendingMfa(
        cookies=[{"name": "SESSION", "value": "c"}],
        login_params={"service": "https://connect.garmin.com"},
        mfa_method="email",
        domain="garmin.com",
    )
    deleted = threading.Event()
    with store.transaction() as login:
        # What Login's storing transaction does (services/connect.py), in its order.
        login.sessions.lock_or_create(USER, now)
        login.challenges.delete_for_user(USER)
        login.challenges.add(
            hashlib.sha256(b"challenge").hexdigest(),
            USER,
            pending,
            expires_at=now + timedelta(minutes=10),
            now=now,
        )
        login.sessions.mark_mfa_pending(USER, now)

        # DeleteSession arrives while that transaction is about to commit.
        def delete() -> None:
            service.call("DeleteSession", pb.DeleteSessionRequest(user_id=USER))
            deleted.set()

        thread = threading.Thread(target=delete)
        thread.start()
        time.sleep(1.0)
        assert not deleted.is_set()  # it waits for the user's row lock
    thread.join(timeout=30)
    assert deleted.is_set()

    with engine.connect() as connection:
        state = connection.execute(
            select(GarminAuthenticationState.state).where(GarminAuthenticationState.user_id == USER)
        ).scalar_one()
        challenges = connection.execute(
            select(func.count()).where(GarminMfaChallenge.user_id == USER)
        ).scalar_one()
    engine.dispose()
    assert state.value == "NOT_CONNECTED"
    # DeleteSession came last: the login it cancelled must not be completable.
    assert challenges == 0
