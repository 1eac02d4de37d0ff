"""A token file's import holds the account's one call until its pair is committed (bfcc0e3): that
hold is what keeps a retry of the same file from sending the file's refresh token, which the
import has rotated away, before the pair is stored.

Found by review, before the fix: GarminGate released an account's call unconditionally
(SqlGarminLimitRepository.release_call: call_claimed_until = NULL, whoever holds it). A sign-in
whose own claim ran out (GARMIN_AUTH_BREAKER_PROBE_TIMEOUT, 60 s by default, 1 s at least) while
it was with Garmin lets the import claim the account; when the sign-in then ends, it releases
the import's claim. A retry of the same file on another replica is admitted at once, does not
see the pair (not committed yet) and sends the file's refresh token again: a reuse (where a
reuse kills the newest token too, the pair the import stores is dead).

The import's commit is held back by an uncommitted INSERT of the user's row (PostgreSQL lets
the retry read past it), as in tests/refresh/test_import_claim_outlasts_the_commit.py; the
service's clock is moved past the sign-in's claim as 61 s passing would."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import DomainError
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.policies import LoginSettings
from auth_service.services.connect import ConnectService
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import LOGIN_PATH, GarminEmulator
from tests.leases import row_lock_waiters
from tests.refresh import Replica

pytestmark = pytest.mark.timeout(60)

USER = "review-released-claim"
EMAIL = f"{USER}@example.com"
PASSWORD = "review-password"
PROBE_SECONDS = GarminLimitSettings().probe_seconds
SSO_HOLD_SECONDS = 1.5  # under the fixtures' 2 s upstream timeout


def _call_claimed(db: sessionmaker[Session], clock: FakeClock) -> bool:
    with db() as session:
        account = SqlGarminLimitRepository(session).account(USER)
    return account is not None and account.call_out(clock.now())


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_late_sign_in_does_not_release_an_imports_hold(
    replicas: tuple[Replica, Replica],
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    uow = UnitsOfWork(SqlStore(db_sessionmaker, box), clock)
    connect = ConnectService(uow, upstream, LoginSettings(limit=1000, signin_cooldown_seconds=0))
    emulator.add_user(EMAIL, PASSWORD)
    token_file = json.dumps(emulator.garminconnect_tokens(EMAIL))
    outcomes: dict[str, object] = {}

    def run(name: str, action: object) -> None:
        try:
            outcomes[name] = action()  # type: ignore[operator]
        except DomainError as exc:
            outcomes[name] = exc

    login = threading.Thread(
        target=run, args=("login", lambda: connect.login(USER, EMAIL, PASSWORD))
    )
    first = threading.Thread(
        target=run,
        args=(
            "first",
            lambda: replicas[0].imports.import_session(USER, garminconnect_tokens=token_file),
        ),
    )
    with uow() as unit:
        unit.sessions.lock_or_create(USER, unit.now)  # uncommitted: every install waits on it
        before = emulator.request_count(LOGIN_PATH)
        emulator.fail_next(LOGIN_PATH, None, delay=SSO_HOLD_SECONDS)  # a slow sign-in
        login.start()
        deadline = time.monotonic() + 10
        while emulator.request_count(LOGIN_PATH) == before:
            assert time.monotonic() < deadline, "the Login never reached Garmin's SSO"
            time.sleep(0.005)
        # The sign-in is with Garmin longer than its claim on the account lasts.
        clock.advance(PROBE_SECONDS + 1)
        first.start()
        deadline = time.monotonic() + 20
        # The import rotated the file's pair (its commit waits), and the sign-in is over at
        # Garmin (its install waits too).
        while emulator.di_refresh_count(EMAIL) != 1 or row_lock_waiters(db_sessionmaker) < 2:
            assert time.monotonic() < deadline, (
                "the import and the Login never reached their installs"
            )
            time.sleep(0.05)
        held = _call_claimed(db_sessionmaker, clock)
        # A client's retry of the same file, on the other replica.
        run(
            "retry",
            lambda: replicas[1].imports.import_session(USER, garminconnect_tokens=token_file),
        )
    login.join(30)
    first.join(30)
    assert not login.is_alive()
    assert not first.is_alive()

    assert emulator.refresh_token_reuses(EMAIL) == 0, (
        f"the retry sent the file's refresh token again after the first import rotated it "
        f"(the account's call claimed while the import committed: {held}; retry answered "
        f"{type(outcomes['retry']).__name__})"
    )
