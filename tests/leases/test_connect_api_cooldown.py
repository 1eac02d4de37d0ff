"""A release that reports Garmin's Connect API 429 (ReleaseLease's garmin_retry_after, also
inside LeaseNextSession's release), both backends.

Before: the release had no way to say it, and the service went on granting the user (and
calling Garmin for it) inside the Retry-After the worker met. Now the release starts the
account's cooldown, capped as the service's own 429s are (GARMIN_AUTH_RATE_LIMIT_MAX_WAIT;
zero: the default wait), in its transaction and audited under it; until the cooldown ends
LeaseSession answers GARMIN_RATE_LIMITED with the time left and LeaseNextSession passes the
user over (and picks it again once it has ended). A negative wait is INVALID_ARGUMENT naming
the field, and nothing is done."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited, InvalidArgument, LeaseLost
from auth_service.domain.garmin_limits import GarminEndpoint, GarminLimitSettings
from auth_service.services.lease_handover import LeaseHandover, LeaseRelease
from auth_service.services.leases import LeaseService
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from auth_service.storage.models import GarminAuditEvent
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.provider import GarthUpstream

from . import GarminAccounts, build_service, read_row

HOLDER = "worker-a"
LONG = timedelta(days=2)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def handover(service: LeaseService) -> LeaseHandover:
    return LeaseHandover(service)


def _events(db: sessionmaker[Session], user_id: str) -> list[tuple[str, str]]:
    with db() as session:
        rows = session.execute(
            select(GarminAuditEvent.rpc, GarminAuditEvent.outcome_reason)
            .where(GarminAuditEvent.user_id == user_id, GarminAuditEvent.rpc != "ImportSession")
            .order_by(GarminAuditEvent.id)
        ).all()
        return [(rpc, reason) for rpc, reason in rows]


def _refusal(service: LeaseService, user_id: str) -> GarminRateLimited:
    with pytest.raises(GarminRateLimited) as raised:
        service.lease_session(user_id, HOLDER, None)
    return raised.value


def test_lease_session_waits_out_the_reported_429(
    service: LeaseService,
    accounts: GarminAccounts,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed("u-a", LONG)
    held = service.lease_session("u-a", HOLDER, None)

    service.release_lease(held.lease.lease_id, None, 2 * MINUTE)

    assert read_row(db_sessionmaker, "u-a").lease_id is None  # released
    refused = _refusal(service, "u-a")
    assert refused.retry_after_seconds == 120
    assert refused.only_this_account
    clock.advance(119)
    assert _refusal(service, "u-a").retry_after_seconds == pytest.approx(1)
    clock.advance(2)
    assert service.lease_session("u-a", HOLDER, None).lease.user_id == "u-a"
    assert _events(db_sessionmaker, "u-a") == [
        ("LeaseSession", "OK"),
        ("ReleaseLease", "OK"),
        ("ReleaseLease", "GARMIN_COOLDOWN_STARTED"),
        ("LeaseSession", "OK"),
    ]


def test_the_wait_is_capped_as_the_services_own(
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    upstream: GarthUpstream,
    clock: FakeClock,
    accounts: GarminAccounts,
) -> None:
    limits = GarminLimitSettings(default_wait_seconds=30, max_wait_seconds=300)
    service = build_service(db_sessionmaker, box, upstream, clock, limits=limits)
    accounts.seed("u-a", LONG)
    accounts.seed("u-b", LONG)
    year = service.lease_session("u-a", HOLDER, None)
    zero = service.lease_session("u-b", HOLDER, None)

    service.release_lease(year.lease.lease_id, None, timedelta(days=365))
    service.release_lease(zero.lease.lease_id, None, timedelta(0))

    assert _refusal(service, "u-a").retry_after_seconds == 300
    assert _refusal(service, "u-b").retry_after_seconds == 30  # no wait: the default
    clock.advance(301)
    assert service.lease_session("u-a", HOLDER, None).lease.user_id == "u-a"


def test_lease_next_session_skips_only_the_cooled_down_user_until_it_ends(
    service: LeaseService, accounts: GarminAccounts, clock: FakeClock
) -> None:
    accounts.seed("u-a", LONG)
    accounts.seed("u-b", LONG)
    held = service.lease_session("u-a", HOLDER, None)
    service.release_lease(held.lease.lease_id, None, MINUTE)
    clock.advance(10)

    # Both never synced: u-a first in line, and due again (no minimum interval).
    second = service.lease_next_session(HOLDER, None, None)
    assert second is not None
    assert second.lease.user_id == "u-b"
    service.release_lease(second.lease.lease_id, None)
    assert service.lease_next_session(HOLDER, None, None) is None

    clock.advance(51)
    again = service.lease_next_session(HOLDER, None, None)
    assert again is not None
    assert again.lease.user_id == "u-a"


def test_the_release_a_lease_next_session_carries_reports_it_too(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed("u-a", LONG)
    accounts.seed("u-b", LONG)
    held = service.lease_session("u-a", HOLDER, None)

    moved = handover.release_and_lease_next(
        LeaseRelease(held.lease.lease_id, None, 5 * MINUTE), HOLDER, None, None
    )

    assert moved.released.user_id == "u-a"
    assert moved.released.lease is None
    assert moved.grant is not None
    assert moved.grant.lease.user_id == "u-b"
    assert _refusal(service, "u-a").retry_after_seconds == 300
    assert ("ReleaseLease", "GARMIN_COOLDOWN_STARTED") in _events(db_sessionmaker, "u-a")


def test_a_negative_wait_is_invalid_and_nothing_is_done(
    service: LeaseService,
    handover: LeaseHandover,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed("u-a", LONG)
    accounts.seed("u-b", LONG)
    held = service.lease_session("u-a", HOLDER, None)
    before = _events(db_sessionmaker, "u-a")

    with pytest.raises(InvalidArgument) as alone:
        service.release_lease(held.lease.lease_id, None, -MINUTE)
    with pytest.raises(InvalidArgument) as carried:
        handover.release_and_lease_next(
            LeaseRelease(held.lease.lease_id, None, timedelta(microseconds=-1)),
            HOLDER,
            None,
            None,
        )

    assert [v.field for v in alone.value.violations] == ["garmin_retry_after"]
    assert [v.field for v in carried.value.violations] == ["release.garmin_retry_after"]
    assert _events(db_sessionmaker, "u-a") == before
    assert read_row(db_sessionmaker, "u-b").lease_id is None
    # Still leased, and no cooldown: released, the user is granted at once.
    service.release_lease(held.lease.lease_id, None)
    assert service.lease_session("u-a", HOLDER, None).lease.user_id == "u-a"


def test_a_refused_release_starts_no_cooldown(
    service: LeaseService, accounts: GarminAccounts
) -> None:
    accounts.seed("u-a", LONG)
    held = service.lease_session("u-a", HOLDER, None)
    service.release_lease(held.lease.lease_id, None)

    with pytest.raises(LeaseLost):
        service.release_lease(held.lease.lease_id, None, MINUTE)

    assert service.lease_session("u-a", HOLDER, None).lease.user_id == "u-a"


def test_a_running_cooldown_of_the_token_endpoint_holds_leases_once_the_api_429s(
    service: LeaseService,
    accounts: GarminAccounts,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    """A cooldown the refresh started holds back the service's calls, not a lease on a token
    that works (README); the Connect API's 429 meanwhile holds back the leases too, until the
    running cooldown (the later end) is over."""
    accounts.seed("u-a", LONG)
    with db_sessionmaker.begin() as session:
        SqlGarminLimitRepository(session).start_account_cooldown(
            "u-a", GarminEndpoint.OAUTH_EXCHANGE, clock.now() + 10 * MINUTE, clock.now()
        )
    held = service.lease_session("u-a", HOLDER, None)

    service.release_lease(held.lease.lease_id, None, MINUTE)

    assert _refusal(service, "u-a").retry_after_seconds == 600
