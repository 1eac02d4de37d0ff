"""A use case that stores a session locks the user's row once per transaction. Before, the
transaction that completes a sign-in (Login, SubmitMfa, ImportSession, ExchangeServiceTicket)
locked the row in lock_or_create and again inside install_tokens; SubmitMfa's read its
challenge and locked the row a third time; ReportRefreshed locked the row for its version check
and again in store_refreshed. Each extra lock is one more round trip holding the row.

Real use cases on PostgreSQL (SQLite has no row locks: its writer holds the database), Garmin's
emulator over HTTP; the statements are counted as they reach the driver: the SELECT of a whole
row by user_id ... FOR UPDATE."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.storage.secrets import SecretBox
from garmin_client.settings import UpstreamSettings
from garmin_emulator import GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.emulators import scanned_emulator
from tests.leases import stored_tokens
from tests.limits import PASSWORD, Replica, build_replica
from tests.refresh import DiAccounts

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]),
]
KEY, SECRET = "lock-once-key", "lock-once-secret"


class RowLocks:
    """Counts the statements that lock one row of garmin_authentication_state."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.count = 0

    def __call__(self, *args: object) -> None:
        statement = " ".join(str(args[2]).split()).upper()
        one_row = re.search(
            r"^SELECT GARMIN_AUTHENTICATION_STATE\.USER_ID, .* FROM GARMIN_AUTHENTICATION_STATE"
            r" WHERE GARMIN_AUTHENTICATION_STATE\.USER_ID = \S+( FOR UPDATE)$",
            statement,
        )
        if one_row and one_row[1]:
            self.count += 1

    def __enter__(self) -> RowLocks:
        event.listen(self.engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self)


@pytest.fixture
def emulator() -> Iterator[GarminEmulator]:
    with scanned_emulator(consumer_key=KEY, consumer_secret=SECRET) as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def replica(
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
    clock: FakeClock,
) -> Replica:
    upstream = both_providers(
        UpstreamSettings(consumer_key=KEY, consumer_secret=SECRET, base_url=emulator.url, retries=0)
    )
    return build_replica(
        db_sessionmaker, SecretBox(keyring), upstream, clock, GarminLimitSettings()
    )


def test_submit_mfa_locks_the_row_once_when_it_stores_the_session(
    replica: Replica, emulator: GarminEmulator, engine: Engine
) -> None:
    user = emulator.add_user("once@example.com", PASSWORD, mfa=True)
    answer = replica.use_cases.connect.login("once", "once@example.com", PASSWORD)
    assert answer.mfa_challenge_id is not None
    connect = replica.use_cases.connect
    with RowLocks(engine) as locks:
        connect.submit_mfa(answer.mfa_challenge_id, user.mfa_code)
    # One transaction claims the challenge (the row, then the challenge); one stores the
    # session (the row, then the challenge): one row lock each.
    assert locks.count == 2


def test_login_locks_the_row_once(
    replica: Replica, emulator: GarminEmulator, engine: Engine
) -> None:
    emulator.add_user("plain@example.com", PASSWORD)
    with RowLocks(engine) as locks:
        replica.use_cases.connect.login("plain", "plain@example.com", PASSWORD)
    assert locks.count == 1


def test_report_refreshed_locks_the_row_once(
    replica: Replica,
    emulator: GarminEmulator,
    engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
    clock: FakeClock,
) -> None:
    accounts = DiAccounts(emulator, clock, db_sessionmaker, SecretBox(keyring))
    accounts.seed("rr-once", access_in=timedelta(hours=1))
    leases = replica.use_cases.leases
    granted = leases.lease_session("rr-once", "w", None)
    with RowLocks(engine) as locks:
        status = leases.report_refreshed(
            granted.lease.lease_id, granted.tokens, session_version=granted.status.session_version
        )
    assert status.session_version == granted.status.session_version + 1
    assert stored_tokens(db_sessionmaker, SecretBox(keyring), "rr-once") == granted.tokens
    assert locks.count == 1
