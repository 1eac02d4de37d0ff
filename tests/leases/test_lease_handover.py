"""LeaseNextSession carrying a release (services.lease_handover), both backends: the release
comes first and is exactly a ReleaseLease; a refused release grants nothing; invalid fields
do nothing; once done the release stands whatever the grant answers. On PostgreSQL the
release and the grant are one statement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.context import current_caller_name
from auth_service.domain.errors import GarminRateLimited, InvalidArgument, LeaseLost
from auth_service.domain.models import LeaseGrant
from auth_service.services.lease_handover import LeaseHandover, LeaseRelease
from auth_service.services.leases import LeaseService
from auth_service.storage.models import (
    GarminAuditEvent,
    GarminAuthenticationState,
    GarminSessionChange,
)
from garmin_emulator import EXCHANGE_PATH, GarminEmulator

from . import GarminAccounts, read_row

HOLDER = "worker-a"
LONG = timedelta(days=2)
HOUR = timedelta(hours=1)


@pytest.fixture
def handover(service: LeaseService) -> LeaseHandover:
    return LeaseHandover(service)


def _first(service: LeaseService, accounts: GarminAccounts, *users: str) -> LeaseGrant:
    """Seed `users` (never synced: all due) and lease the first of them by name."""
    for user_id in users:
        accounts.seed(user_id, LONG)
    return service.lease_session(users[0], HOLDER, None)


def _changes(db: sessionmaker[Session]) -> list[tuple[str, str]]:
    with db() as session:
        changes = session.execute(
            select(GarminSessionChange.rpc, GarminSessionChange.user_id).order_by(
                GarminSessionChange.id
            )
        ).all()
        return [(rpc, user_id) for rpc, user_id in changes if rpc != "ImportSession"]


def _rpcs(db: sessionmaker[Session]) -> list[tuple[str, str | None]]:
    with db() as session:
        events = (
            session.execute(select(GarminAuditEvent).order_by(GarminAuditEvent.id)).scalars().all()
        )
        return [(event.rpc, event.user_id) for event in events if event.rpc != "ImportSession"]


def test_releases_then_grants_the_next_due_session(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    held = _first(service, accounts, "u-a", "u-b")
    mark = clock.now() - timedelta(minutes=5)
    clock.advance(10)

    moved = handover.release_and_lease_next(
        LeaseRelease(held.lease.lease_id, mark), HOLDER, None, HOUR
    )

    # The release is a ReleaseLease: the sync recorded, the lease ended.
    assert moved.released.user_id == "u-a"
    assert moved.released.lease is None
    assert (moved.released.synced_through, moved.released.last_synced_at) == (mark, clock.now())
    released = read_row(db_sessionmaker, "u-a")
    assert (released.lease_id, released.synced_through) == (None, mark)
    # Then the next due session: u-a was just synced, so u-b (min_sync_interval 1 h).
    assert moved.grant is not None
    assert moved.grant.lease.user_id == "u-b"
    assert read_row(db_sessionmaker, "u-b").lease_id is not None
    # Recorded as the two calls it replaces, in their order, in the trail and the change log.
    assert _rpcs(db_sessionmaker)[-2:] == [("ReleaseLease", "u-a"), ("LeaseNextSession", "u-b")]
    assert _changes(db_sessionmaker)[-2:] == [
        ("ReleaseLease", "u-a"),
        ("LeaseNextSession", "u-b"),
    ]


def test_with_nothing_due_it_still_releases(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    held = _first(service, accounts, "u-a")

    moved = handover.release_and_lease_next(
        LeaseRelease(held.lease.lease_id, clock.now()), HOLDER, None, HOUR
    )

    assert moved.grant is None
    assert moved.released.last_synced_at == clock.now()
    assert read_row(db_sessionmaker, "u-a").lease_id is None


@pytest.mark.parametrize("how", ["released", "expired", "unknown"])
def test_a_refused_release_grants_nothing(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
    how: str,
) -> None:
    held = _first(service, accounts, "u-a", "u-b")
    lease_id = held.lease.lease_id
    if how == "released":
        service.release_lease(lease_id, None)
    elif how == "expired":
        clock.advance((held.lease.expires_at - clock.now()).total_seconds() + 1)
    else:
        lease_id = "A" * len(lease_id)
    before = _rpcs(db_sessionmaker)

    with pytest.raises(LeaseLost):
        handover.release_and_lease_next(LeaseRelease(lease_id, None), HOLDER, None, None)

    assert read_row(db_sessionmaker, "u-b").lease_id is None  # nothing granted
    assert _rpcs(db_sessionmaker) == before


def test_a_release_by_another_caller_is_refused(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    held = _first(service, accounts, "u-a", "u-b")
    token = current_caller_name.set("someone-else")
    try:
        with pytest.raises(LeaseLost):
            handover.release_and_lease_next(
                LeaseRelease(held.lease.lease_id, None), HOLDER, None, None
            )
    finally:
        current_caller_name.reset(token)
    assert read_row(db_sessionmaker, "u-a").lease_id is not None  # still held
    assert read_row(db_sessionmaker, "u-b").lease_id is None


@dataclass(frozen=True)
class Invalid:
    """A handover with unusable fields, and the fields INVALID_ARGUMENT names."""

    future_mark: bool
    holder: str
    ttl: timedelta | None
    fields: set[str]


@pytest.mark.parametrize(
    "case",
    [
        Invalid(True, HOLDER, None, {"release.synced_through"}),
        Invalid(False, "", None, {"holder"}),
        Invalid(False, HOLDER, timedelta(seconds=-1), {"ttl"}),
        Invalid(True, "", None, {"release.synced_through", "holder"}),
    ],
)
def test_invalid_fields_do_nothing(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
    case: Invalid,
) -> None:
    held = _first(service, accounts, "u-a", "u-b")
    mark = clock.now() + (timedelta(days=1) if case.future_mark else timedelta(0))
    before = _rpcs(db_sessionmaker)

    with pytest.raises(InvalidArgument) as raised:
        handover.release_and_lease_next(
            LeaseRelease(held.lease.lease_id, mark), case.holder, case.ttl, None
        )

    assert {violation.field for violation in raised.value.violations} == case.fields
    assert read_row(db_sessionmaker, "u-a").lease_id is not None  # not released
    assert read_row(db_sessionmaker, "u-b").lease_id is None
    assert _rpcs(db_sessionmaker) == before


def test_an_empty_release_lease_id_is_named_as_the_release_field(
    handover: LeaseHandover,
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        handover.release_and_lease_next(LeaseRelease("", None), HOLDER, None, None)
    assert [violation.field for violation in raised.value.violations] == ["release.lease_id"]


def test_the_release_stands_when_the_grant_fails(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    """Garmin busy at the next user's central refresh, its token already expired: the grant
    answers GARMIN_RATE_LIMITED, and the release it came after is kept."""
    held = _first(service, accounts, "u-a")
    accounts.seed("u-b", timedelta(minutes=-5))
    emulator.fail_next(EXCHANGE_PATH, 429, retry_after=30)

    with pytest.raises(GarminRateLimited):
        handover.release_and_lease_next(
            LeaseRelease(held.lease.lease_id, clock.now()), HOLDER, None, HOUR
        )

    assert read_row(db_sessionmaker, "u-a").lease_id is None
    assert read_row(db_sessionmaker, "u-a").last_synced_at == clock.now()
    assert read_row(db_sessionmaker, "u-b").lease_id is None


def test_on_postgresql_the_release_and_the_grant_are_one_statement(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    """One round trip and one commit per synced user; SQLite runs the two statements of a
    ReleaseLease and a LeaseNextSession (and the trail's own) in one transaction."""
    held = _first(service, accounts, "u-a", "u-b")
    engine = db_sessionmaker.kw["bind"]
    assert isinstance(engine, Engine)
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        moved = handover.release_and_lease_next(
            LeaseRelease(held.lease.lease_id, clock.now()), HOLDER, None, HOUR
        )
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert moved.grant is not None
    assert moved.grant.lease.user_id == "u-b"
    if engine.dialect.name == "postgresql":
        assert len(statements) == 1
        assert statements[0].startswith("WITH released AS")
    else:
        assert len(statements) > 2


def test_a_next_session_that_fails_to_open_is_skipped_and_the_release_stands(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    """The first grant comes with the release; when its session cannot be opened, it is
    released as an attempt and the next due session is granted, as LeaseNextSession does."""
    held = _first(service, accounts, "u-a", "u-b", "u-c")
    with db_sessionmaker.begin() as session:
        session.execute(
            update(GarminAuthenticationState)
            .where(GarminAuthenticationState.user_id == "u-b")
            .values(session_ciphertext=b"\x02not-a-sealed-session")
        )

    moved = handover.release_and_lease_next(
        LeaseRelease(held.lease.lease_id, clock.now()), HOLDER, None, HOUR
    )

    assert moved.released.user_id == "u-a"
    assert read_row(db_sessionmaker, "u-a").lease_id is None
    assert moved.grant is not None
    assert moved.grant.lease.user_id == "u-c"
    skipped = read_row(db_sessionmaker, "u-b")
    assert (skipped.lease_id, skipped.last_sync_attempt_at) == (None, clock.now())


def test_a_scoped_caller_is_granted_only_within_its_scope(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    held = _first(service, accounts, "b-1", "a-2", "b-3")

    moved = handover.release_and_lease_next(
        LeaseRelease(held.lease.lease_id, None), HOLDER, None, HOUR, user_id_prefix="b-"
    )

    # a-2 is due first, but outside the caller's scope.
    assert moved.grant is not None
    assert moved.grant.lease.user_id == "b-3"
    assert read_row(db_sessionmaker, "a-2").lease_id is None
    assert read_row(db_sessionmaker, "b-1").last_sync_attempt_at == clock.now()
