"""Tests of the single-flight central refresh and keep-alive (issue 12), with garth and DI
sessions: two replicas (two engines on one database), the emulator over real HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.audit import AuditedRpc
from auth_service.domain.clock import Clock
from auth_service.domain.events import NoRefreshEvents, RefreshEvents
from auth_service.domain.models import GarminTokens
from auth_service.domain.paging import Pager
from auth_service.domain.policies import LeaseSettings, RefreshSettings
from auth_service.domain.ports import GarminUpstream
from auth_service.services.keepalive import KeepAlive
from auth_service.services.leases import LeaseService
from auth_service.services.session_admin import SessionAdmin
from auth_service.services.session_import import SessionImport, TokenParsers
from auth_service.services.session_refresh import RefreshAsker, SessionRefresher
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from auth_service.upstream.garth.dumps import tokens_from_garth_dumps
from garmin_client.endpoints import DEFAULT_DOMAIN
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.fixtures.di_upstream import di_tokens
from tests.leases import seed_active

ARRIVAL_TIMEOUT_SECONDS = 10.0
# A refresh asked for by a test (named like GetStatus's in the audit trail).
ASKER = RefreshAsker(AuditedRpc.GET_STATUS, reason_for=lambda message: f"test: {message}")
PARSERS = TokenParsers(garth=tokens_from_garth_dumps, garminconnect=tokens_from_garminconnect)


@dataclass
class Replica:
    """The use cases of one replica that refresh sessions, sharing its one refresher (and
    ImportSession, which refreshes a token file before storing it)."""

    refresher: SessionRefresher
    leases: LeaseService
    imports: SessionImport
    sessions: SessionAdmin
    keepalive: KeepAlive


def build_replica(
    db: sessionmaker[Session],
    box: SecretBox,
    upstream: GarminUpstream,
    clock: Clock,
    settings: RefreshSettings,
    events: RefreshEvents | None = None,
) -> Replica:
    uow = UnitsOfWork(SqlStore(db, box), clock)
    refresher = SessionRefresher(uow, upstream, settings, events or NoRefreshEvents())
    return Replica(
        refresher=refresher,
        leases=LeaseService(uow, refresher, LeaseSettings()),
        imports=SessionImport(uow, refresher, PARSERS, settings),
        sessions=SessionAdmin(uow, upstream, refresher, Pager([b"0" * 32])),
        keepalive=KeepAlive(uow, refresher, settings),
    )


class DiAccounts:
    """DI sessions issued by the emulator and stored as a login stores them."""

    def __init__(
        self, emulator: GarminEmulator, clock: Clock, db: sessionmaker[Session], box: SecretBox
    ) -> None:
        self.emulator = emulator
        self.clock = clock
        self.db = db
        self.box = box
        self._known: set[str] = set()

    @staticmethod
    def email(user_id: str) -> str:
        return f"{user_id}@example.com"

    def seed(
        self,
        user_id: str,
        *,
        access_in: timedelta = timedelta(hours=20),
        refresh_in: timedelta | None = timedelta(days=30),
        domain: str = DEFAULT_DOMAIN,
    ) -> GarminTokens:
        """A fresh DI pair from diauth.<domain> for the user, stored ACTIVE; the access token
        expires `access_in` from now on our clock, the refresh token `refresh_in` (None:
        unknown, as imported), at Garmin too when sooner than Garmin's own expiry."""
        email = self.email(user_id)
        if email not in self._known:
            self.emulator.add_user(email, "irrelevant-password")
            self._known.add(email)
        tokens = di_tokens(self.emulator.issue_di_tokens(email, domain=domain), domain=domain)
        now = self.clock.now()
        if refresh_in is not None:
            self.emulator.expire_refresh_tokens(email, after=refresh_in.total_seconds())
        tokens = dataclasses.replace(
            tokens,
            oauth2=dataclasses.replace(
                tokens.oauth2,
                expires_at=now + access_in,
                refresh_token_expires_at=None if refresh_in is None else now + refresh_in,
            ),
        )
        seed_active(self.db, self.box, user_id, tokens, now)
        return tokens

    def refreshes(self, user_id: str) -> int:
        return self.emulator.di_refresh_count(self.email(user_id))

    def reuses(self, user_id: str) -> int:
        return self.emulator.refresh_token_reuses(self.email(user_id))


@contextlib.contextmanager
def during_next_refresh(
    emulator: GarminEmulator, action: Callable[[], object], *, hold: float = 0.5
) -> Iterator[None]:
    """Hold the next DI token request open for `hold` seconds and run `action` on another
    thread as soon as it reaches the emulator (while the caller waits on Garmin)."""
    before = emulator.request_count(DI_TOKEN_PATH)
    emulator.fail_next(DI_TOKEN_PATH, None, delay=hold)

    def act() -> None:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_SECONDS
        while emulator.request_count(DI_TOKEN_PATH) == before:
            if time.monotonic() > deadline:
                raise AssertionError("no DI token request reached the emulator")
            time.sleep(0.002)
        action()

    with ThreadPoolExecutor(max_workers=1) as pool:
        acting = pool.submit(act)
        try:
            yield
        finally:
            emulator.clear_faults()
        acting.result(timeout=ARRIVAL_TIMEOUT_SECONDS + hold)
