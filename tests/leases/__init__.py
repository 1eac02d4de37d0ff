"""Helpers shared by the lease tests: real Garmin tokens from the emulator, a way to act
while a token exchange is in flight, and the row writes the connect and session-admin use
cases make (login and delete, through the very repository methods they call), so lease tests
can drive them. Fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import Clock
from auth_service.domain.events import NoRefreshEvents
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.models import GarminTokens, LoginSucceeded
from auth_service.domain.policies import DiSettings, LeaseSettings, LoginFlow, RefreshSettings
from auth_service.domain.views import SessionRow
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.leases import LeaseService
from auth_service.services.session_refresh import SessionRefresher
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.models import GarminAuthenticationState
from auth_service.storage.secrets import SecretBox
from auth_service.storage.session_repository import SqlSessionRepository
from auth_service.storage.unit_of_work import SqlStore
from auth_service.upstream.di.provider import DiUpstream
from auth_service.upstream.garth.provider import GarthUpstream
from auth_service.upstream.router import UpstreamRouter
from garmin_client.settings import UpstreamSettings
from garmin_emulator import EXCHANGE_PATH, GarminEmulator

PASSWORD = "correct horse battery staple"
# How long a held token exchange stays open: ample for a row write or a clock move.
HOLD_SECONDS = 0.5
# How long to wait for a held exchange to reach the emulator before failing the test.
ARRIVAL_TIMEOUT_SECONDS = 10.0


def row_lock_waiters(db: sessionmaker[Session]) -> int:
    """PostgreSQL backends of this database waiting on a lock in a statement on the session
    table (a transaction of the test holds the row, and the service's statement queues)."""
    with db() as session:
        count = session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() "
                "AND query ILIKE '%garmin_authentication_state%'"
            )
        ).scalar_one()
    return int(count)


def with_expiry(tokens: GarminTokens, expires_at: datetime) -> GarminTokens:
    """The same tokens, their access token expiring at `expires_at` on our side (Garmin still
    refreshes them: only the OAuth1 token matters to the exchange)."""
    return dataclasses.replace(
        tokens, oauth2=dataclasses.replace(tokens.oauth2, expires_at=expires_at)
    )


class GarminAccounts:
    """One Garmin account at the emulator per user id, and real tokens for it.

    Tokens come from real logins through the garth adapter; the access token's expiry is then
    set relative to the test's clock (which starts at real time, like Garmin's tokens).
    """

    def __init__(
        self,
        emulator: GarminEmulator,
        upstream: GarthUpstream,
        clock: Clock,
        db: sessionmaker[Session],
        box: SecretBox,
    ) -> None:
        self.emulator = emulator
        self.upstream = upstream
        self.clock = clock
        self.db = db
        self.box = box
        self._known: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def email(user_id: str) -> str:
        return f"{user_id}@example.com"

    def login(self, user_id: str, expires_in: timedelta) -> GarminTokens:
        """Log the user in at the emulator (a new OAuth1 token each time); the access token
        expires `expires_in` from now on our clock (negative: already expired on our side)."""
        email = self.email(user_id)
        with self._lock:
            if email not in self._known:
                self.emulator.add_user(email, PASSWORD)
                self._known.add(email)
        result = self.upstream.login(email, PASSWORD)
        assert isinstance(result, LoginSucceeded)
        return with_expiry(result.tokens, self.clock.now() + expires_in)

    def refreshed(self, tokens: GarminTokens) -> GarminTokens:
        """What a holder's garth gets when it refreshes `tokens` at Garmin."""
        return self.upstream.refresh(tokens)

    def seed(self, user_id: str, expires_in: timedelta) -> GarminTokens:
        """Log in and store the session as Login does; the emulator's records (request and
        exchange counts) then start from zero."""
        tokens = self.login(user_id, expires_in)
        seed_active(self.db, self.box, user_id, tokens, self.clock.now())
        self.emulator.reset_records()
        return tokens

    def revoke(self, user_id: str) -> None:
        """Garmin revokes every token of the user: its next exchange answers 401."""
        self.emulator.revoke_tokens(self.email(user_id))

    def exchanges(self, user_id: str) -> int:
        """How many OAuth2 tokens Garmin issued for the user since the records started."""
        return self.emulator.exchange_count(self.email(user_id))

    def assert_issued_by_garmin(self, fresh: GarminTokens, old: GarminTokens, user_id: str) -> None:
        """`fresh` is `old` refreshed at Garmin: same OAuth1 token, a new access token that
        Garmin's API accepts as the user's."""
        assert fresh.oauth1 == old.oauth1
        assert fresh.oauth2.access_token != old.oauth2.access_token
        assert self.upstream.validate(fresh, allow_refresh=False) is fresh
        last_call = self.emulator.api_calls[-1]
        assert (last_call.token_owner, last_call.status) == (self.email(user_id), 200)


@contextlib.contextmanager
def during_next_exchange(
    emulator: GarminEmulator, action: Callable[[], object], *, hold: float = HOLD_SECONDS
) -> Iterator[None]:
    """Hold the next token exchange open for `hold` seconds; as soon as it reaches the
    emulator, run `action` on another thread, so it happens while the caller waits on Garmin.

    Re-raises what `action` raised; fails if no exchange arrived. Put pytest.raises inside
    the block, so a failing action is still reported.
    """
    arrived_before = emulator.request_count(EXCHANGE_PATH)
    emulator.fail_next(EXCHANGE_PATH, None, delay=hold)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="during-exchange") as pool:
        acting = pool.submit(_act_on_arrival, emulator, arrived_before, action)
        try:
            yield
        finally:
            emulator.clear_faults()
        acting.result(timeout=ARRIVAL_TIMEOUT_SECONDS + hold)


def _act_on_arrival(
    emulator: GarminEmulator, arrived_before: int, action: Callable[[], object]
) -> None:
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_SECONDS
    while emulator.request_count(EXCHANGE_PATH) == arrived_before:
        if time.monotonic() > deadline:
            raise AssertionError("no token exchange reached the emulator")
        time.sleep(0.002)
    action()


def activate_session(
    session: Session, box: SecretBox, user_id: str, tokens: GarminTokens, now: datetime
) -> None:
    """What a successful Login/SubmitMfa does to the user's row (the repository methods they
    call): ACTIVE, the sealed tokens, a new session version, no invalidation, and any live
    lease ended (its holder's next call answers LEASE_LOST). fencing_token is kept."""
    sessions = SqlSessionRepository(session, box)
    locked = sessions.lock_or_create(user_id, now)
    sessions.install_tokens(locked, tokens, now, validated=True)


def delete_session(session: Session, box: SecretBox, user_id: str, now: datetime) -> bool:
    """What DeleteSession does to the row (the repository methods it calls): back to
    NOT_CONNECTED, secrets wiped, lease ended, sync bookkeeping cleared; fencing_token is
    kept. False when there is no row."""
    sessions = SqlSessionRepository(session, box)
    if sessions.lock(user_id) is None:
        return False
    sessions.disconnect(user_id, now)
    return True


def seed_active(
    db: sessionmaker[Session], box: SecretBox, user_id: str, tokens: GarminTokens, now: datetime
) -> None:
    with db.begin() as session:
        activate_session(session, box, user_id, tokens, now)


def read_row(db: sessionmaker[Session], user_id: str) -> SessionRow:
    """The user's row as stored."""
    table = GarminAuthenticationState.__table__
    with db() as session:
        row = session.execute(select(table).where(table.c.user_id == user_id)).first()
        assert row is not None
        return cast(SessionRow, row)


def stored_tokens(db: sessionmaker[Session], box: SecretBox, user_id: str) -> GarminTokens | None:
    row = read_row(db, user_id)
    blob = row.session_ciphertext
    return None if blob is None else box.open_tokens(user_id, row.session_version, blob)


def build_service(
    db: sessionmaker[Session],
    box: SecretBox,
    upstream: GarthUpstream,
    clock: Clock,
    settings: LeaseSettings | None = None,
    refresh: RefreshSettings | None = None,
    limits: GarminLimitSettings | None = None,
) -> LeaseService:
    router = UpstreamRouter(
        garth=upstream,
        di=DiUpstream(upstream.settings, DiSettings()),
        login_flow=LoginFlow.GARTH,
    )
    uow = UnitsOfWork(SqlStore(db, box), clock)
    if limits is None:
        refresher = SessionRefresher(uow, router, refresh or RefreshSettings(), NoRefreshEvents())
        return LeaseService(uow, refresher, settings or LeaseSettings())
    # One gate with the test's limits, shared as the composition root shares it.
    gate = GarminGate(uow, limits)
    refresher = SessionRefresher(uow, router, refresh or RefreshSettings(), NoRefreshEvents(), gate)
    return LeaseService(uow, refresher, settings or LeaseSettings(), gate)


def refused_consumer_garth(emulator: GarminEmulator, consumer_key: str) -> GarthUpstream:
    """A garth adapter signing with a consumer secret Garmin refuses (a typo in
    GARMIN_AUTH_OAUTH_CONSUMER_SECRET): every exchange it sends is answered 401."""
    return GarthUpstream(
        UpstreamSettings(
            consumer_key=consumer_key,
            consumer_secret="typo-in-the-secret",
            base_url=emulator.url,
            timeout_seconds=5.0,
            retries=0,
        )
    )
