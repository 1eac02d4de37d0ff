"""Housekeeping takes session rows before challenges, as every other writer of both does
(DeleteSession: the user's row, then the user's challenges). Before, a pass deleted the
expired challenges first and settled their users' rows second; on PostgreSQL a DeleteSession
of such a user during the pass deadlocked with it, and one of the two failed (DeleteSession
answering UNAVAILABLE DATABASE_UNAVAILABLE). Settling first is the same pass: a row is settled
when no live challenge is left, whether or not the expired ones are deleted yet."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine

from auth_service.crypto import Keyring
from auth_service.domain.policies import LoginFlow, LoginSettings
from auth_service.storage.database import session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.service.test_submit_mfa_lock_order import _someone_waits_on_a_lock

pytestmark = pytest.mark.timeout(60)
PASSWORD = "correct horse battery staple"
USER = "hk-lock"


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_housekeeping_and_delete_session_do_not_deadlock(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    database_url: str,
    keyring: Keyring,
) -> None:
    replica = service_factory.start(
        login_flow=LoginFlow.DI,
        login=LoginSettings(limit=20, window_seconds=3600, mfa_challenge_ttl_seconds=0.2),
    )
    garmin.add_user("hk-lock@example.com", PASSWORD, mfa=True, mfa_code="424242")
    replica.call(
        "Login", pb.LoginRequest(user_id=USER, email="hk-lock@example.com", password=PASSWORD)
    )
    time.sleep(0.4)  # the challenge has expired, unclaimed: the next pass removes it
    housekeeping = replica.running.application.use_cases.housekeeping
    failures: list[BaseException] = []

    def housekeep() -> None:
        try:
            housekeeping.run_once()
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    engine = create_engine(database_url)
    store = SqlStore(session_factory(engine), SecretBox(keyring))
    try:
        with store.transaction() as delete:
            # DeleteSession, in its order: the user's row first ...
            delete.sessions.lock(USER)
            thread = threading.Thread(target=housekeep)
            thread.start()
            # ... housekeeping's pass reaches the row and waits for it ...
            assert _someone_waits_on_a_lock(database_url, time.monotonic() + 20)
            # ... then the user's challenges, and the row.
            delete.challenges.delete_for_user(USER)
            delete.sessions.disconnect(USER, datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - reported below
        failures.append(exc)
    thread.join(timeout=30)
    engine.dispose()
    assert not failures, f"a transaction failed: {failures[0]!r}"
