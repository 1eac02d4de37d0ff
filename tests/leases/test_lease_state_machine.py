"""A stateful property test: random sequences of lease, renew, release, report, login/import
and delete calls against a plain model of issue 4's rules, with a fake clock that moves.
Garmin is the emulator over HTTP, reached through the real garth adapter: logins, central
refreshes and the holders' own refreshes all get their tokens from it.

Every call's outcome (grant or which error) is predicted by the model and compared; after
every step the stored rows are compared with the model and the invariants are checked:
never two live leases for one user, fencing tokens strictly increasing, an AUTH_EXPIRED
session holds no secrets, nothing a live holder stored is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import (
    DomainError,
    LeaseHeld,
    LeaseLost,
    SessionNotActive,
    SessionNotFound,
)
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import GarminTokens, LeaseGrant, SessionState
from auth_service.services.leases import LeaseService
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings
from garmin_emulator import EXCHANGE_PATH, GarminEmulator

from . import GarminAccounts, activate_session, build_service, delete_session, with_expiry

USERS = ("u0", "u1", "u2")
# Whose tokens a holder of a lease nobody was granted reports (the call must be refused).
STRAY = "stray"
HOLDERS = ("w-a", "w-b")
TTLS = st.sampled_from([None, 5, 60, 300, 3600])
TICKS = st.sampled_from([0, 1, 30, 61, 301, 3601])
# Fresh logins hold either a token that outlives any lease or one that needs a central
# refresh for most leases.
TOKEN_LIFETIMES = st.sampled_from([timedelta(seconds=90), timedelta(days=10)])
DEFAULT_TTL = timedelta(seconds=300)


@dataclass
class ModelLease:
    lease_id: str
    holder: str
    expires_at: datetime


@dataclass
class ModelUser:
    """What the rules say the user's row holds."""

    exists: bool = False
    state: SessionState = SessionState.NOT_CONNECTED
    tokens: GarminTokens | None = None
    version: int = 0
    fencing: int = 0
    lease: ModelLease | None = None
    last_synced_at: datetime | None = None
    synced_through: datetime | None = None
    last_sync_attempt_at: datetime | None = None
    invalidated_reason: str | None = None
    granted_tokens: list[int] = field(default_factory=list)

    def live_lease(self, now: datetime) -> ModelLease | None:
        if self.state is not SessionState.ACTIVE or self.lease is None:
            return None
        return self.lease if self.lease.expires_at > now else None

    def due(self, now: datetime, interval: timedelta) -> bool:
        cutoff = now - interval
        return (
            self.state is SessionState.ACTIVE
            and self.live_lease(now) is None
            and (self.last_sync_attempt_at is None or self.last_sync_attempt_at < cutoff)
            and (self.last_synced_at is None or self.last_synced_at < cutoff)
        )


class LeaseMachine(RuleBasedStateMachine):
    """Drives one LeaseService (plus the session service's row writes) on a clean table."""

    leases = Bundle("leases")

    def __init__(
        self,
        db: sessionmaker[Session],
        box: SecretBox,
        emulator: GarminEmulator,
        upstream_settings: UpstreamSettings,
    ) -> None:
        super().__init__()
        self.db = db
        self.box = box
        self.emulator = emulator
        # Garmin's tokens carry real expiry times, so the clock starts at real time.
        self.clock = FakeClock(datetime.now(UTC))
        # On the same clock: the adapter counts a fresh token's lifetime from its clock's
        # now. On the machine's clock (real time) a refresh after the test moved an hour
        # ahead gave a token already expired on the service's clock (RefreshedWithoutAccess).
        upstream = GarthUpstream(upstream_settings, clock=self.clock)
        self.accounts = GarminAccounts(emulator, upstream, self.clock, db, box)
        self.service: LeaseService = build_service(db, box, upstream, self.clock)
        self.model = {user_id: ModelUser() for user_id in USERS}
        self.owner: dict[str, str] = {}  # lease id -> user id
        self.handed: dict[str, GarminTokens] = {}  # lease id -> the tokens its grant carried

    @initialize()
    def clean_tables(self) -> None:
        with self.db.begin() as session:
            session.execute(delete(GarminMfaChallenge))
            session.execute(delete(GarminAuthenticationState))

    # --- the session service's writes ------------------------------------------------

    @rule(user_id=st.sampled_from(USERS), lifetime=TOKEN_LIFETIMES)
    def login_or_import(self, user_id: str, lifetime: timedelta) -> None:
        now = self.clock.now()
        tokens = self.accounts.login(user_id, lifetime)
        with self.db.begin() as session:
            activate_session(session, self.box, user_id, tokens, now)
        user = self.model[user_id]
        user.exists = True
        user.state = SessionState.ACTIVE
        user.tokens = tokens
        user.version += 1
        user.lease = None
        user.invalidated_reason = None

    @rule(user_id=st.sampled_from(USERS))
    def disconnect(self, user_id: str) -> None:
        with self.db.begin() as session:
            existed = delete_session(session, self.box, user_id, self.clock.now())
        user = self.model[user_id]
        assert existed == user.exists
        if not existed:
            return
        fencing, version, granted = user.fencing, user.version, user.granted_tokens
        # The version counts changes of the stored tokens: only an ACTIVE row holds any.
        wiped = 1 if user.state is SessionState.ACTIVE else 0
        self.model[user_id] = ModelUser(
            exists=True, fencing=fencing, version=version + wiped, granted_tokens=granted
        )

    # --- the lease protocol ----------------------------------------------------------

    @rule(target=leases, user_id=st.sampled_from(USERS), holder=st.sampled_from(HOLDERS), ttl=TTLS)
    def lease(self, user_id: str, holder: str, ttl: int | None) -> str:
        user = self.model[user_id]
        now = self.clock.now()
        expected: type[DomainError] | None = None
        if not user.exists or user.state is SessionState.NOT_CONNECTED:
            expected = SessionNotFound
        elif user.state is not SessionState.ACTIVE:
            expected = SessionNotActive
        elif user.live_lease(now) is not None:
            expected = LeaseHeld
        lifetime = DEFAULT_TTL if ttl is None else timedelta(seconds=ttl)
        exchanges = self._exchanges()
        outcome: LeaseGrant | DomainError
        try:
            outcome = self.service.lease_session(user_id, holder, None if ttl is None else lifetime)
        except DomainError as exc:
            outcome = exc
        if expected is not None:
            assert isinstance(outcome, expected), outcome
            assert self._exchanges() == exchanges  # a refused grant never talks to Garmin
            return "A" * 32  # a well-formed id nobody holds
        assert isinstance(outcome, LeaseGrant), outcome
        self._granted(user_id, outcome, now + lifetime, exchanges)
        return outcome.lease.lease_id

    @rule(
        target=leases,
        holder=st.sampled_from(HOLDERS),
        ttl=TTLS,
        interval=st.sampled_from([None, 0, 60, 3600]),
    )
    def lease_next(self, holder: str, ttl: int | None, interval: int | None) -> str:
        now = self.clock.now()
        gap = timedelta(seconds=interval or 0)
        due = sorted(
            (user.last_synced_at is not None, user.last_synced_at or now, user_id)
            for user_id, user in self.model.items()
            if user.due(now, gap)
        )
        lifetime = DEFAULT_TTL if ttl is None else timedelta(seconds=ttl)
        exchanges = self._exchanges()
        grant = self.service.lease_next_session(
            holder,
            None if ttl is None else lifetime,
            None if interval is None else gap,
        )
        if not due:
            assert grant is None
            assert self._exchanges() == exchanges
            return "B" * 32
        assert grant is not None
        assert grant.lease.user_id == due[0][2]
        self._granted(grant.lease.user_id, grant, now + lifetime, exchanges)
        return grant.lease.lease_id

    def _exchanges(self) -> tuple[int, dict[str, int]]:
        """Exchange requests Garmin received, and the tokens it issued per user, so far."""
        return (
            self.emulator.request_count(EXCHANGE_PATH),
            {user_id: self.accounts.exchanges(user_id) for user_id in USERS},
        )

    def _granted(
        self,
        user_id: str,
        grant: LeaseGrant,
        expires_at: datetime,
        exchanges_before: tuple[int, dict[str, int]],
    ) -> None:
        user = self.model[user_id]
        assert user.tokens is not None
        assert grant.lease.expires_at == expires_at
        # Fencing tokens grow strictly with every grant, across deletes and logins.
        assert grant.lease.fencing_token == user.fencing + 1
        assert all(grant.lease.fencing_token > earlier for earlier in user.granted_tokens)
        user.fencing = grant.lease.fencing_token
        user.granted_tokens.append(user.fencing)
        user.lease = ModelLease(grant.lease.lease_id, grant.lease.holder, expires_at)
        self.owner[grant.lease.lease_id] = user_id
        requests_before, issued_before = exchanges_before
        requests_after, issued_after = self._exchanges()
        if user.tokens.oauth2.expires_at <= expires_at:
            # Central refresh: the service exchanged the user's token at Garmin, once, and
            # stored (and handed out) what Garmin issued.
            assert requests_after == requests_before + 1
            assert issued_after == {**issued_before, user_id: issued_before[user_id] + 1}
            self.accounts.assert_issued_by_garmin(grant.tokens, user.tokens, user_id)
            user.tokens = grant.tokens
            user.version += 1
        else:
            assert (requests_after, issued_after) == exchanges_before
        assert grant.tokens == user.tokens
        self.handed[grant.lease.lease_id] = grant.tokens

    def _holder_of(self, lease_id: str) -> ModelUser | None:
        """The model user whose live lease this is, if any."""
        user_id = self.owner.get(lease_id)
        if user_id is None:
            return None
        user = self.model[user_id]
        live = user.live_lease(self.clock.now())
        return user if live is not None and live.lease_id == lease_id else None

    @rule(lease_id=leases, ttl=TTLS)
    def renew(self, lease_id: str, ttl: int | None) -> None:
        user = self._holder_of(lease_id)
        lifetime = DEFAULT_TTL if ttl is None else timedelta(seconds=ttl)
        try:
            view = self.service.renew_lease(lease_id, None if ttl is None else lifetime)
        except LeaseLost:
            assert user is None
            return
        assert user is not None
        assert user.lease is not None
        user.lease.expires_at = self.clock.now() + lifetime
        assert view.expires_at == user.lease.expires_at

    @rule(lease_id=leases, synced_hours_ago=st.none() | st.integers(min_value=0, max_value=48))
    def release(self, lease_id: str, synced_hours_ago: int | None) -> None:
        user = self._holder_of(lease_id)
        now = self.clock.now()
        mark = None if synced_hours_ago is None else now - timedelta(hours=synced_hours_ago)
        try:
            self.service.release_lease(lease_id, mark)
        except LeaseLost:
            assert user is None
            return
        assert user is not None
        user.lease = None
        user.last_sync_attempt_at = now
        if mark is not None:
            user.last_synced_at = now
            if user.synced_through is None or user.synced_through < mark:
                user.synced_through = mark

    @rule(lease_id=leases, lifetime=TOKEN_LIFETIMES)
    def report_refreshed(self, lease_id: str, lifetime: timedelta) -> None:
        user = self._holder_of(lease_id)
        handed = self.handed.get(lease_id)
        # The holder's garth refreshed the tokens it was handed (a holder of no lease at all
        # has some other account's); the new access token lasts `lifetime` on our clock.
        tokens = (
            self.accounts.login(STRAY, lifetime)
            if handed is None
            else with_expiry(self.accounts.refreshed(handed), self.clock.now() + lifetime)
        )
        try:
            self.service.report_refreshed(lease_id, tokens)
        except LeaseLost:
            assert user is None
            return
        assert user is not None
        user.tokens = tokens
        user.version += 1

    @rule(lease_id=leases)
    def report_invalidated(self, lease_id: str) -> None:
        user = self._holder_of(lease_id)
        try:
            self.service.report_invalidated(lease_id, "401 from Garmin")
        except LeaseLost:
            assert user is None
            return
        assert user is not None
        user.state = SessionState.AUTH_EXPIRED
        user.tokens = None
        user.version += 1
        user.lease = None
        user.invalidated_reason = "401 from Garmin"

    @rule(seconds=TICKS)
    def tick(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def rows_match_the_model(self) -> None:
        now = self.clock.now()
        with self.db() as session:
            rows = {row.user_id: row for row in session.scalars(select(GarminAuthenticationState))}
        assert set(rows) == {user_id for user_id, user in self.model.items() if user.exists}
        for user_id, row in rows.items():
            user = self.model[user_id]
            assert row.state is user.state
            assert row.session_version == user.version
            assert row.fencing_token == user.fencing
            # Nothing a live holder (or a login) stored is lost or overwritten.
            stored = (
                None
                if row.session_ciphertext is None
                else self.box.open_tokens(user_id, row.session_version, row.session_ciphertext)
            )
            assert stored == user.tokens
            expected_expiry = None if user.tokens is None else user.tokens.oauth2.expires_at
            assert row.access_token_expires_at == expected_expiry
            if row.state is SessionState.AUTH_EXPIRED:
                assert row.session_ciphertext is None
                assert row.invalidated_reason == user.invalidated_reason
            # At most one live lease per user, and it is the one the model expects.
            live = user.live_lease(now)
            row_live = (
                row.lease_id
                if row.state is SessionState.ACTIVE
                and row.lease_expires_at is not None
                and row.lease_expires_at > now
                else None
            )
            assert row_live == (None if live is None else lease_digest(live.lease_id))
            assert (row.last_synced_at, row.synced_through, row.last_sync_attempt_at) == (
                user.last_synced_at,
                user.synced_through,
                user.last_sync_attempt_at,
            )

    @invariant()
    def fencing_tokens_strictly_increase(self) -> None:
        for user in self.model.values():
            assert user.granted_tokens == sorted(set(user.granted_tokens))


def test_random_call_sequences_follow_the_rules(
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    emulator: GarminEmulator,
    upstream: GarthUpstream,
) -> None:
    run_state_machine_as_test(
        lambda: LeaseMachine(db_sessionmaker, box, emulator, upstream.settings),
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.parametrize("seconds", [0, 1])
def test_model_due_rule_is_strict(seconds: int) -> None:
    """The model mirrors the query: attempted exactly `interval` ago is not due yet."""
    now = FakeClock().now()
    user = ModelUser(exists=True, state=SessionState.ACTIVE)
    user.last_sync_attempt_at = now - timedelta(seconds=60 + seconds)
    assert user.due(now, timedelta(seconds=60)) is bool(seconds)
