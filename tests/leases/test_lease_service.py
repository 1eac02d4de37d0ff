"""Every lease rule of issue 4, on SQLite and PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import (
    InvalidArgument,
    LeaseHeld,
    LeaseLost,
    SessionNotActive,
    SessionNotFound,
)
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import SessionState
from auth_service.domain.policies import LeaseSettings
from auth_service.domain.validation import TOKEN_ID_PATTERN
from auth_service.services.leases import LeaseService
from auth_service.storage.models import GarminAuthenticationState
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.provider import GarthUpstream

from . import (
    GarminAccounts,
    activate_session,
    build_service,
    delete_session,
    read_row,
    seed_active,
    stored_tokens,
)

USER = "user-1"
HOLDER = "worker-a"
# Tokens that outlive any lease, so these tests never trigger a central refresh.
LONG = timedelta(days=2)


@pytest.fixture
def active(accounts: GarminAccounts) -> str:
    accounts.seed(USER, LONG)
    return USER


def _set_state(db: sessionmaker[Session], user_id: str, state: SessionState) -> None:
    with db.begin() as session:
        changed = session.execute(
            update(GarminAuthenticationState)
            .where(GarminAuthenticationState.user_id == user_id)
            .values(state=state)
        )
        assert cast(CursorResult[Any], changed).rowcount == 1


def _fields(error: InvalidArgument) -> set[str]:
    return {violation.field for violation in error.violations}


# --- LeaseSession ----------------------------------------------------------------------


def test_lease_grants_exclusive_lease_with_tokens_and_status(
    service: LeaseService,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    tokens = accounts.seed(USER, LONG)

    grant = service.lease_session(USER, HOLDER, None)

    assert grant.lease.user_id == USER
    assert grant.lease.holder == HOLDER
    assert grant.lease.fencing_token == 1
    assert grant.lease.acquired_at == clock.now()
    assert grant.lease.expires_at == clock.now() + timedelta(seconds=300)
    assert TOKEN_ID_PATTERN.match(grant.lease.lease_id)
    assert grant.tokens == tokens
    assert grant.status.state is SessionState.ACTIVE
    assert grant.status.lease == grant.lease
    row = read_row(db_sessionmaker, USER)
    assert row.lease_id == lease_digest(grant.lease.lease_id)
    assert row.fencing_token == 1


def test_lease_uses_requested_ttl(service: LeaseService, active: str, clock: FakeClock) -> None:
    grant = service.lease_session(active, HOLDER, timedelta(seconds=42))
    assert grant.lease.expires_at == clock.now() + timedelta(seconds=42)


@pytest.mark.parametrize("seconds", [4.999, 3600.001, 0, -1])
def test_lease_rejects_ttl_out_of_bounds(
    service: LeaseService, active: str, seconds: float
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        service.lease_session(active, HOLDER, timedelta(seconds=seconds))
    assert _fields(caught.value) == {"ttl"}


@pytest.mark.parametrize("seconds", [5, 3600])
def test_lease_accepts_ttl_bounds(service: LeaseService, active: str, seconds: float) -> None:
    assert service.lease_session(active, HOLDER, timedelta(seconds=seconds)).lease


def test_lease_lists_every_bad_field(service: LeaseService) -> None:
    with pytest.raises(InvalidArgument) as caught:
        service.lease_session("bad user!", "", timedelta(hours=2))
    assert _fields(caught.value) == {"user_id", "holder", "ttl"}


def test_lease_unknown_user_is_not_found(service: LeaseService) -> None:
    with pytest.raises(SessionNotFound):
        service.lease_session("nobody", HOLDER, None)


def test_lease_deleted_session_is_not_found(
    service: LeaseService,
    active: str,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    with db_sessionmaker.begin() as session:
        delete_session(session, box, active, clock.now())
    with pytest.raises(SessionNotFound):
        service.lease_session(active, HOLDER, None)


def test_lease_inactive_session_is_refused(
    service: LeaseService, active: str, db_sessionmaker: sessionmaker[Session]
) -> None:
    _set_state(db_sessionmaker, active, SessionState.AUTH_EXPIRED)
    with pytest.raises(SessionNotActive, match=SessionState.AUTH_EXPIRED.value):
        service.lease_session(active, HOLDER, None)
    assert read_row(db_sessionmaker, active).fencing_token == 0


def test_a_refusal_is_explained_by_the_state_callers_see(
    service: LeaseService, active: str, db_sessionmaker: sessionmaker[Session]
) -> None:
    # MFA_PENDING with no live challenge (the login was abandoned) reads NOT_CONNECTED, as in
    # GetStatus: the refusal says so (with a live challenge: SESSION_NOT_ACTIVE, in
    # tests/service/test_status_and_lease_contract.py).
    _set_state(db_sessionmaker, active, SessionState.MFA_PENDING)
    with pytest.raises(SessionNotFound):
        service.lease_session(active, HOLDER, None)
    assert read_row(db_sessionmaker, active).fencing_token == 0


@pytest.mark.parametrize("second_holder", ["worker-b", HOLDER])
def test_lease_held_by_live_lease_is_refused_saying_by_whom_until_when(
    service: LeaseService,
    active: str,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
    second_holder: str,
) -> None:
    first = service.lease_session(active, HOLDER, None)
    clock.advance(299)

    with pytest.raises(LeaseHeld) as caught:
        service.lease_session(active, second_holder, None)

    assert HOLDER in caught.value.message
    assert first.lease.expires_at.isoformat() in caught.value.message
    row = read_row(db_sessionmaker, active)
    assert (row.lease_id, row.fencing_token) == (lease_digest(first.lease.lease_id), 1)


def test_expired_lease_is_taken_over_and_the_old_lease_is_dead(
    service: LeaseService, active: str, accounts: GarminAccounts, clock: FakeClock
) -> None:
    first = service.lease_session(active, HOLDER, timedelta(seconds=60))
    clock.advance(60)  # expires_at <= now: free at the very instant it expires

    second = service.lease_session(active, "worker-b", None)

    assert second.lease.fencing_token == first.lease.fencing_token + 1
    assert second.lease.lease_id != first.lease.lease_id
    with pytest.raises(LeaseLost):
        service.renew_lease(first.lease.lease_id, None)
    with pytest.raises(LeaseLost):
        service.release_lease(first.lease.lease_id, None)
    with pytest.raises(LeaseLost):
        service.report_refreshed(first.lease.lease_id, accounts.refreshed(first.tokens))
    with pytest.raises(LeaseLost):
        service.report_invalidated(first.lease.lease_id, "401 from Garmin")
    assert service.renew_lease(second.lease.lease_id, None).holder == "worker-b"


def test_fencing_tokens_grow_across_grants_releases_delete_and_login(
    service: LeaseService,
    active: str,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    seen = []
    for _ in range(3):
        grant = service.lease_session(active, HOLDER, None)
        seen.append(grant.lease.fencing_token)
        service.release_lease(grant.lease.lease_id, None)
    with db_sessionmaker.begin() as session:
        delete_session(session, box, active, clock.now())
    accounts.seed(active, LONG)
    seen.append(service.lease_session(active, HOLDER, None).lease.fencing_token)
    accounts.seed(active, LONG)
    seen.append(service.lease_session(active, HOLDER, None).lease.fencing_token)

    assert seen == [1, 2, 3, 4, 5]


def test_lease_ids_are_fresh_and_well_formed(service: LeaseService, active: str) -> None:
    ids = set()
    for _ in range(5):
        lease_id = service.lease_session(active, HOLDER, None).lease.lease_id
        assert TOKEN_ID_PATTERN.match(lease_id)
        ids.add(lease_id)
        service.release_lease(lease_id, None)
    assert len(ids) == 5


# --- RenewLease --------------------------------------------------------------------------


def test_renew_moves_expiry_to_now_plus_ttl(
    service: LeaseService, active: str, clock: FakeClock
) -> None:
    grant = service.lease_session(active, HOLDER, timedelta(seconds=60))
    clock.advance(50)

    renewed = service.renew_lease(grant.lease.lease_id, timedelta(seconds=120))
    assert renewed.expires_at == clock.now() + timedelta(seconds=120)
    assert renewed.fencing_token == grant.lease.fencing_token
    assert renewed.acquired_at == grant.lease.acquired_at

    clock.advance(100)  # past the original expiry, within the renewed one
    assert service.renew_lease(grant.lease.lease_id, None).expires_at == clock.now() + timedelta(
        seconds=300
    )


def test_renew_dead_lease_is_lost(service: LeaseService, active: str, clock: FakeClock) -> None:
    grant = service.lease_session(active, HOLDER, timedelta(seconds=60))
    clock.advance(60)
    with pytest.raises(LeaseLost):
        service.renew_lease(grant.lease.lease_id, None)
    with pytest.raises(LeaseLost):
        service.renew_lease("A" * 32, None)  # well-formed, never granted


def test_renew_after_release_is_lost(service: LeaseService, active: str) -> None:
    grant = service.lease_session(active, HOLDER, None)
    service.release_lease(grant.lease.lease_id, None)
    with pytest.raises(LeaseLost):
        service.renew_lease(grant.lease.lease_id, None)


def test_renew_validates_its_arguments(service: LeaseService) -> None:
    with pytest.raises(InvalidArgument) as caught:
        service.renew_lease("not an id!", timedelta(seconds=1))
    assert _fields(caught.value) == {"lease_id", "ttl"}
    with pytest.raises(InvalidArgument):
        service.renew_lease("", None)


# --- ReleaseLease --------------------------------------------------------------------------


def test_release_without_synced_through_records_only_an_attempt(
    service: LeaseService, active: str, db_sessionmaker: sessionmaker[Session], clock: FakeClock
) -> None:
    grant = service.lease_session(active, HOLDER, None)
    clock.advance(10)

    status = service.release_lease(grant.lease.lease_id, None)

    assert status.lease is None
    assert status.last_sync_attempt_at == clock.now()
    assert status.last_synced_at is None
    assert status.synced_through is None
    row = read_row(db_sessionmaker, active)
    assert (row.lease_id, row.lease_holder, row.lease_expires_at) == (None, None, None)
    assert row.fencing_token == 1
    # Free again right away.
    assert service.lease_session(active, "worker-b", None).lease.fencing_token == 2


def test_release_with_synced_through_records_sync_and_never_moves_backwards(
    service: LeaseService, active: str, clock: FakeClock
) -> None:
    mark = clock.now() - timedelta(hours=1)
    grant = service.lease_session(active, HOLDER, None)
    status = service.release_lease(grant.lease.lease_id, mark)
    assert (status.last_synced_at, status.synced_through) == (clock.now(), mark)
    assert status.last_sync_attempt_at == clock.now()

    clock.advance(60)
    grant = service.lease_session(active, HOLDER, None)
    status = service.release_lease(grant.lease.lease_id, mark - timedelta(days=1))
    assert status.synced_through == mark  # older mark ignored
    assert status.last_synced_at == clock.now()

    clock.advance(60)
    later = mark + timedelta(minutes=30)
    grant = service.lease_session(active, HOLDER, None)
    assert service.release_lease(grant.lease.lease_id, later).synced_through == later


def test_release_accepts_small_clock_skew_but_not_the_future(
    service: LeaseService, active: str, clock: FakeClock
) -> None:
    grant = service.lease_session(active, HOLDER, None)
    with pytest.raises(InvalidArgument) as caught:
        service.release_lease(grant.lease.lease_id, clock.now() + timedelta(hours=1))
    assert _fields(caught.value) == {"synced_through"}
    with pytest.raises(InvalidArgument):
        service.release_lease(grant.lease.lease_id, datetime(2026, 1, 1))  # noqa: DTZ001
    ahead = clock.now() + timedelta(seconds=30)
    assert service.release_lease(grant.lease.lease_id, ahead).synced_through == ahead


def test_release_of_dead_lease_is_lost_and_changes_nothing(
    service: LeaseService, active: str, db_sessionmaker: sessionmaker[Session], clock: FakeClock
) -> None:
    grant = service.lease_session(active, HOLDER, None)
    service.release_lease(grant.lease.lease_id, None)
    before = read_row(db_sessionmaker, active)
    clock.advance(5)
    with pytest.raises(LeaseLost):
        service.release_lease(grant.lease.lease_id, clock.now())
    after = read_row(db_sessionmaker, active)
    assert after.last_sync_attempt_at == before.last_sync_attempt_at
    assert after.last_synced_at is None


# --- ReportRefreshed ---------------------------------------------------------------------


def test_report_refreshed_stores_tokens_for_the_live_holder(
    service: LeaseService,
    active: str,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    grant = service.lease_session(active, HOLDER, None)
    clock.advance(30)
    fresh = accounts.refreshed(grant.tokens)  # what the holder's garth got from Garmin

    status = service.report_refreshed(grant.lease.lease_id, fresh)

    assert status.session_version == grant.status.session_version + 1
    assert status.last_validated_at == clock.now()
    assert status.access_token_expires_at == fresh.oauth2.expires_at
    # The lease goes on (a status read back from the row never names the id).
    assert status.lease == dataclasses.replace(grant.lease, lease_id="")
    assert stored_tokens(db_sessionmaker, box, active) == fresh


def test_report_refreshed_by_dead_lease_is_lost_and_changes_nothing(
    service: LeaseService,
    active: str,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    grant = service.lease_session(active, HOLDER, timedelta(seconds=10))
    before_tokens = stored_tokens(db_sessionmaker, box, active)
    before = read_row(db_sessionmaker, active)
    clock.advance(10)

    with pytest.raises(LeaseLost):
        service.report_refreshed(grant.lease.lease_id, accounts.refreshed(grant.tokens))

    after = read_row(db_sessionmaker, active)
    assert stored_tokens(db_sessionmaker, box, active) == before_tokens
    assert after.session_version == before.session_version
    assert after.last_validated_at == before.last_validated_at


def test_report_refreshed_validates_lease_id(
    service: LeaseService, accounts: GarminAccounts
) -> None:
    with pytest.raises(InvalidArgument):
        service.report_refreshed("short", accounts.login(USER, timedelta(0)))


# --- ReportInvalidated -------------------------------------------------------------------


def test_report_invalidated_expires_session_wipes_secrets_and_ends_lease(
    service: LeaseService, active: str, db_sessionmaker: sessionmaker[Session], clock: FakeClock
) -> None:
    grant = service.lease_session(active, HOLDER, None)
    clock.advance(5)

    status = service.report_invalidated(grant.lease.lease_id, "401 on /userprofile")

    assert status.state is SessionState.AUTH_EXPIRED
    assert status.invalidated_reason == "401 on /userprofile"
    assert status.invalidated_at == clock.now()
    assert status.access_token_expires_at is None
    assert status.session_version == grant.status.session_version + 1
    assert status.lease is None
    row = read_row(db_sessionmaker, active)
    assert row.session_ciphertext is None
    assert row.lease_id is None
    assert row.fencing_token == 1
    with pytest.raises(LeaseLost):
        service.release_lease(grant.lease.lease_id, None)
    with pytest.raises(SessionNotActive):
        service.lease_session(active, HOLDER, None)


def test_report_invalidated_by_dead_lease_is_lost_and_changes_nothing(
    service: LeaseService, active: str, db_sessionmaker: sessionmaker[Session], clock: FakeClock
) -> None:
    grant = service.lease_session(active, HOLDER, timedelta(seconds=10))
    clock.advance(11)
    with pytest.raises(LeaseLost):
        service.report_invalidated(grant.lease.lease_id, "401")
    row = read_row(db_sessionmaker, active)
    assert row.state is SessionState.ACTIVE
    assert row.session_ciphertext is not None


def test_report_invalidated_validates_reason(service: LeaseService, active: str) -> None:
    grant = service.lease_session(active, HOLDER, None)
    with pytest.raises(InvalidArgument) as caught:
        service.report_invalidated(grant.lease.lease_id, "")
    assert _fields(caught.value) == {"reason"}
    with pytest.raises(InvalidArgument):
        service.report_invalidated(grant.lease.lease_id, "x" * 513)


# --- Login/import and delete against leases ---------------------------------------------


def test_new_login_ends_the_live_lease_and_keeps_fencing_growing(
    service: LeaseService,
    active: str,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    grant = service.lease_session(active, HOLDER, None)
    new_tokens = accounts.login(active, LONG)
    seed_active(db_sessionmaker, box, active, new_tokens, clock.now())

    with pytest.raises(LeaseLost):
        service.report_refreshed(grant.lease.lease_id, accounts.refreshed(grant.tokens))
    assert stored_tokens(db_sessionmaker, box, active) == new_tokens
    regrant = service.lease_session(active, "worker-b", None)
    assert regrant.lease.fencing_token == grant.lease.fencing_token + 1
    assert regrant.tokens == new_tokens


def test_reactivation_after_invalidation_clears_it(
    service: LeaseService, active: str, accounts: GarminAccounts
) -> None:
    grant = service.lease_session(active, HOLDER, None)
    service.report_invalidated(grant.lease.lease_id, "401")
    accounts.seed(active, LONG)
    regrant = service.lease_session(active, HOLDER, None)
    assert regrant.status.invalidated_reason is None
    assert regrant.lease.fencing_token == 2


def test_delete_ends_the_live_lease_and_keeps_the_fencing_token(
    service: LeaseService,
    active: str,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    grant = service.lease_session(active, HOLDER, None)
    with db_sessionmaker.begin() as session:
        assert delete_session(session, box, active, clock.now())
    with pytest.raises(LeaseLost):
        service.renew_lease(grant.lease.lease_id, None)
    with pytest.raises(LeaseLost):
        service.report_invalidated(grant.lease.lease_id, "401")
    row = read_row(db_sessionmaker, active)
    assert row.state is SessionState.NOT_CONNECTED
    assert row.fencing_token == 1


# --- LeaseNextSession ------------------------------------------------------------------


def _seed_users(accounts: GarminAccounts, *user_ids: str) -> None:
    for user_id in user_ids:
        accounts.seed(user_id, LONG)


def _sync(service: LeaseService, user_id: str, clock: FakeClock) -> None:
    grant = service.lease_session(user_id, HOLDER, None)
    service.release_lease(grant.lease.lease_id, clock.now())


def test_next_session_is_none_when_nothing_is_stored(service: LeaseService) -> None:
    assert service.lease_next_session(HOLDER, None, None) is None


def test_next_session_takes_never_synced_first_then_oldest_sync(
    service: LeaseService, accounts: GarminAccounts, clock: FakeClock
) -> None:
    _seed_users(accounts, "u-old", "u-new", "u-never")
    _sync(service, "u-old", clock)
    clock.advance(60)
    _sync(service, "u-new", clock)
    clock.advance(60)

    order = []
    while (grant := service.lease_next_session(HOLDER, None, None)) is not None:
        order.append(grant.lease.user_id)
    assert order == ["u-never", "u-old", "u-new"]


def test_next_session_skips_held_inactive_and_recent(
    service: LeaseService,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    _seed_users(accounts, "u-held", "u-expired", "u-synced", "u-tried", "u-due")
    _set_state(db_sessionmaker, "u-expired", SessionState.AUTH_EXPIRED)
    clock.advance(60)
    _sync(service, "u-due", clock)  # synced, but longer ago than the interval
    clock.advance(3600)
    service.lease_session("u-held", "other", timedelta(hours=1))
    _sync(service, "u-synced", clock)
    tried = service.lease_session("u-tried", HOLDER, None)
    service.release_lease(tried.lease.lease_id, None)  # a failed sync still counts
    clock.advance(60)

    interval = timedelta(minutes=30)
    grant = service.lease_next_session(HOLDER, None, interval)
    assert grant is not None
    assert grant.lease.user_id == "u-due"
    assert service.lease_next_session(HOLDER, None, interval) is None


def test_next_session_takes_over_expired_leases(
    service: LeaseService,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    _seed_users(accounts, "u-1")
    first = service.lease_session("u-1", "stuck", timedelta(seconds=30))
    assert service.lease_next_session(HOLDER, None, None) is None
    clock.advance(30)

    grant = service.lease_next_session(HOLDER, timedelta(seconds=90), None)

    assert grant is not None
    assert grant.lease.fencing_token == first.lease.fencing_token + 1
    assert grant.lease.expires_at == clock.now() + timedelta(seconds=90)
    assert grant.tokens == stored_tokens(db_sessionmaker, box, "u-1")
    with pytest.raises(LeaseLost):
        service.release_lease(first.lease.lease_id, None)


def test_next_session_drains_each_user_once(
    service: LeaseService, accounts: GarminAccounts, clock: FakeClock
) -> None:
    users = [f"u-{i:02d}" for i in range(10)]
    _seed_users(accounts, *users)
    clock.advance(1)
    leased = []
    while (grant := service.lease_next_session(HOLDER, None, timedelta(minutes=5))) is not None:
        leased.append(grant.lease.user_id)
        service.release_lease(grant.lease.lease_id, None)
    assert sorted(leased) == users
    clock.advance(301)
    assert service.lease_next_session(HOLDER, None, timedelta(minutes=5)) is not None


@pytest.mark.parametrize(
    "interval", [timedelta(seconds=-1), timedelta(days=30, seconds=1)], ids=["negative", "too-long"]
)
def test_next_session_validates_min_sync_interval(
    service: LeaseService, interval: timedelta
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        service.lease_next_session("", timedelta(hours=5), interval)
    assert _fields(caught.value) == {"holder", "ttl", "min_sync_interval"}


def test_next_session_accepts_interval_bounds(service: LeaseService) -> None:
    assert service.lease_next_session(HOLDER, None, timedelta(0)) is None
    assert service.lease_next_session(HOLDER, None, timedelta(days=30)) is None


def test_lease_times_are_utc(service: LeaseService, active: str) -> None:
    grant = service.lease_session(active, HOLDER, None)
    assert grant.lease.expires_at.tzinfo is UTC
    assert grant.status.updated_at is not None
    assert grant.status.updated_at.utcoffset() == timedelta(0)


def test_default_ttl_comes_from_settings(
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    upstream: GarthUpstream,
    clock: FakeClock,
    active: str,
) -> None:
    settings = LeaseSettings(default_ttl=17, max_ttl=60, min_ttl=10)
    service = build_service(db_sessionmaker, box, upstream, clock, settings)
    assert service.lease_session(active, HOLDER, None).lease.expires_at == clock.now() + timedelta(
        seconds=17
    )
    with pytest.raises(InvalidArgument):
        service.lease_session(active, HOLDER, timedelta(seconds=61))


def test_activate_session_helper_matches_login(
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    tokens = accounts.login("fresh", LONG)
    with db_sessionmaker.begin() as session:
        activate_session(session, box, "fresh", tokens, clock.now())
    row = read_row(db_sessionmaker, "fresh")
    assert (row.state, row.session_version, row.fencing_token) == (SessionState.ACTIVE, 1, 0)
    assert stored_tokens(db_sessionmaker, box, "fresh") == tokens
