"""SubmitMfa takes the user's session row before the challenge, as every other writer of both
does (DeleteSession, Login, ExchangeServiceTicket, ImportSession: the row, then the user's
challenges). Before, SubmitMfa's transactions locked the challenge first and the row second; on
PostgreSQL the two orders deadlocked, and the victim answered UNAVAILABLE DATABASE_UNAVAILABLE
("the database did not answer"), for SubmitMfa after Garmin had accepted the code.

The other transaction here runs DeleteSession's statements in DeleteSession's order through
the real repositories (as tests/service/test_delete_session_race.py does for Login's), so it
holds the row while SubmitMfa reaches it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import create_engine, text

from auth_service.crypto import Keyring
from auth_service.domain.policies import LoginFlow
from auth_service.storage.database import session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory, failure_of

pytestmark = pytest.mark.timeout(60)
PASSWORD = "correct horse battery staple"
USER = "lock"


def _someone_waits_on_a_lock(engine_url: str, deadline: float) -> bool:
    engine = create_engine(engine_url)
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                waiting = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                ).scalar_one()
            if waiting:
                return True
            time.sleep(0.05)
        return False
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_submit_mfa_and_delete_session_do_not_deadlock(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    database_url: str,
    keyring: Keyring,
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("lock@example.com", PASSWORD, mfa=True, mfa_code="424242")
    challenge = replica.call(
        "Login", pb.LoginRequest(user_id=USER, email="lock@example.com", password=PASSWORD)
    ).mfa_challenge_id

    engine = create_engine(database_url)
    store = SqlStore(session_factory(engine), SecretBox(keyring))
    outcome: list[object] = []

    def submit() -> None:
        try:
            request = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="424242")
            outcome.append(replica.call("SubmitMfa", request).status.state)
        except grpc.RpcError as error:
            failure = failure_of(error)
            outcome.append((failure.code, failure.reason))

    delete_error: list[BaseException] = []
    try:
        with store.transaction() as delete:
            # DeleteSession, in its order: the user's row first ...
            delete.sessions.lock(USER)
            thread = threading.Thread(target=submit)
            thread.start()
            # ... SubmitMfa's code is accepted by Garmin and it waits for the row ...
            assert _someone_waits_on_a_lock(database_url, time.monotonic() + 20)
            # ... then the user's challenges, and the row.
            delete.challenges.delete_for_user(USER)
            delete.sessions.disconnect(USER, datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - reported below
        delete_error.append(exc)
    thread.join(timeout=30)
    engine.dispose()

    assert not delete_error, f"DeleteSession's transaction failed: {delete_error[0]!r}"
    # DeleteSession won: the login it cancelled is gone (NOT_FOUND), never "database down".
    assert outcome == [(grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND")]
