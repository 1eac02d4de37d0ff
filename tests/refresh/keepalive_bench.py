"""What the keep-alive tests build on the package's fixtures (the `bench` fixture of
tests/refresh/conftest.py): replicas, passes one interval apart, and the session rows'
keep-alive columns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.models import GarminTokens
from auth_service.domain.policies import DiSettings, LoginFlow, RefreshSettings
from auth_service.domain.ports import GarminUpstream
from auth_service.services.keepalive import KeepAliveReport
from auth_service.storage.models import GarminAuthenticationState
from auth_service.storage.secrets import SecretBox
from auth_service.storage.session_repository import SqlSessionRepository
from auth_service.upstream.di.provider import DiUpstream
from auth_service.upstream.garth.provider import GarthUpstream
from auth_service.upstream.router import UpstreamRouter
from garmin_client.settings import UpstreamSettings
from tests.leases import read_row

from . import DiAccounts, Replica, build_replica

_STATE = GarminAuthenticationState.__table__


@dataclass
class KeepAliveBench:
    """The test's accounts (and through them its emulator and database) and clock, with the
    package's upstream and refresh settings."""

    accounts: DiAccounts
    upstream: UpstreamRouter
    upstream_settings: UpstreamSettings
    clock: FakeClock
    settings: RefreshSettings

    def replica(
        self, settings: RefreshSettings | None = None, *, upstream: GarminUpstream | None = None
    ) -> Replica:
        """A replica with `settings` (else the package's), calling Garmin through `upstream`
        (else the package's providers)."""
        return build_replica(
            self.accounts.db,
            self.accounts.box,
            upstream or self.upstream,
            self.clock,
            settings or self.settings,
        )

    def replica_with_di(self, **di: Any) -> Replica:
        """A replica whose DI provider has these DiSettings (on our clock, as in the service)."""
        router = UpstreamRouter(
            garth=GarthUpstream(self.upstream_settings),
            di=DiUpstream(
                self.upstream_settings, DiSettings(plain_http=True, **di), clock=self.clock
            ),
            login_flow=LoginFlow.DI,
        )
        return self.replica(upstream=router)

    def passes(self, replica: Replica, count: int) -> list[KeepAliveReport]:
        """`count` keep-alive passes, one interval apart."""
        reports = []
        for _ in range(count):
            reports.append(replica.keepalive.run_once())
            self.clock.advance(self.settings.keepalive_interval_seconds)
        return reports

    def passes_until_refreshed(self, replica: Replica, user_id: str) -> int:
        """Keep-alive passes, one interval apart, until `user_id`'s session is refreshed or its
        refresh token has died: how many."""
        dies = self.refresh_token_dies(user_id)
        passes = 0
        while self.clock.now() < dies and self.accounts.refreshes(user_id) == 0:
            replica.keepalive.run_once()
            passes += 1
            self.clock.advance(self.settings.keepalive_interval_seconds)
        return passes

    def seed_unrefreshable(self, user_ids: list[str]) -> None:
        """Imported sessions (unknown expiry: first in keep-alive's order) sealed under a key
        the service no longer has: their refresh can never succeed (as with a client id Garmin
        refuses: GarminUnavailable)."""
        lost = SecretBox(Keyring.parse(Keyring.generate_key_value("lost-key")))
        stuck = DiAccounts(self.accounts.emulator, self.clock, self.accounts.db, lost)
        for user_id in user_ids:
            stuck.seed(user_id, refresh_in=None)

    def install_new_tokens(self, user_id: str, tokens: GarminTokens) -> None:
        """Store new credentials for the user, as a sign-in or an import does."""
        with self.accounts.db.begin() as session:
            sessions = SqlSessionRepository(session, self.accounts.box)
            locked = sessions.lock_or_create(user_id, self.clock.now())
            sessions.install_tokens(locked, tokens, self.clock.now(), validated=False)

    def refresh_token_dies(self, user_id: str) -> datetime:
        dies = read_row(self.accounts.db, user_id).refresh_token_expires_at
        assert dies is not None
        return dies

    def not_before(self, user_id: str) -> datetime | None:
        value: datetime | None = self._column(user_id, _STATE.c.keepalive_not_before)
        return value

    def failures(self, user_id: str) -> int:
        value: int = self._column(user_id, _STATE.c.keepalive_failures)
        return value

    def _column(self, user_id: str, column: ColumnElement[Any]) -> Any:
        with self.accounts.db() as session:
            return session.execute(select(column).where(_STATE.c.user_id == user_id)).scalar_one()
