"""A sign-in that went on past the embed page's 429 succeeded at Garmin (the ticket is spent,
the tokens issued); the sign-in cooldown for that 429 is then written. A failure of that one
write (here: the user's throttle row locked past lock_timeout) failed the Login and threw the
issued tokens away (found by review of the fix); only the cooldown's record is lost now, as
the gate's own record of a 429 may be. The same Login without the 429 is the control."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import EMBED_PATH, PREAUTHORIZED_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.service.test_login import PASSWORD

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend() -> str:
    return "postgresql"


@pytest.mark.parametrize("embed_429", [False, True], ids=["control-no-429", "embed-429"])
def test_a_failed_cooldown_write_does_not_lose_a_sign_in_garmin_completed(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str, embed_429: bool
) -> None:
    admin = create_engine(database_url, poolclass=NullPool)
    name = make_url(database_url).database
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET lock_timeout = '1s'"))
    try:
        replica = service_factory.start(login_flow=LoginFlow.GARTH)
        garmin.add_user("ada@example.com", PASSWORD)
        if embed_429:
            garmin.fail_next(EMBED_PATH, 429, retry_after=600)
        garmin.fail_next(PREAUTHORIZED_PATH, None, delay=1.5)  # answered, slowly

        outcome: list[Any] = []

        def login() -> None:
            request = pb.LoginRequest(user_id="ada", email="ada@example.com", password=PASSWORD)
            try:
                outcome.append(replica.call("Login", request, timeout=30))
            except grpc.RpcError as error:
                outcome.append(error)

        thread = threading.Thread(target=login)
        thread.start()
        deadline = time.monotonic() + 10
        while garmin.request_count(EMBED_PATH) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        # The login attempt was counted (its row lock released); hold the user's throttle row.
        with admin.connect() as holder:
            holder.execute(text("SET lock_timeout = '5s'"))
            holder.execute(
                text("SELECT 1 FROM garmin_login_throttle WHERE user_id = 'ada' FOR UPDATE")
            ).all()
            thread.join(30)
            holder.rollback()
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" RESET lock_timeout'))
        admin.dispose()

    answer = outcome[0]
    assert not isinstance(answer, grpc.RpcError), (
        f"Login failed after Garmin issued its tokens: {answer.code()} {answer.details()}"
    )
    assert answer.outcome == pb.LOGIN_OUTCOME_AUTHENTICATED
