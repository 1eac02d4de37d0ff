"""Central refresh end to end: the real garth adapter against the Garmin emulator over HTTP."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited, GarminSessionRejected, LeaseHeld
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import LeaseGrant, SessionState
from auth_service.services.leases import LeaseService
from auth_service.storage.secrets import SecretBox
from garmin_emulator import EXCHANGE_PATH, GarminEmulator

from . import GarminAccounts, read_row, stored_tokens

pytestmark = pytest.mark.timeout(60)

USER = "user-1"


@pytest.mark.parametrize("next_session", [False, True], ids=["lease", "lease-next"])
def test_expired_session_is_refreshed_once_when_many_ask_at_once(
    service: LeaseService,
    emulator: GarminEmulator,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
    next_session: bool,
) -> None:
    old = accounts.seed(USER, timedelta(minutes=-5))
    barrier = threading.Barrier(8)

    def ask(index: int) -> LeaseGrant | Exception | None:
        barrier.wait()
        try:
            if next_session:
                return service.lease_next_session(f"worker-{index}", None, None)
            return service.lease_session(USER, f"worker-{index}", None)
        except LeaseHeld as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, range(8)))

    grants = [r for r in results if isinstance(r, LeaseGrant)]
    assert len(grants) == 1
    assert accounts.exchanges(USER) == 1
    fresh = grants[0].tokens
    assert fresh.oauth1 == old.oauth1
    assert fresh.oauth2.access_token != old.oauth2.access_token
    assert fresh.oauth2.expires_at > grants[0].lease.expires_at
    assert stored_tokens(db_sessionmaker, box, USER) == fresh
    assert grants[0].status.session_version == 2
    # A later grant needs no exchange: the stored token now outlives the lease.
    clock.advance(300)
    service.lease_session(USER, "worker-late", None)
    assert accounts.exchanges(USER) == 1


def test_revoked_session_ends_auth_expired_with_secrets_wiped(
    service: LeaseService,
    emulator: GarminEmulator,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed(USER, timedelta(minutes=-5))
    accounts.revoke(USER)

    with pytest.raises(GarminSessionRejected):
        service.lease_session(USER, "worker-a", None)

    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.AUTH_EXPIRED
    assert row.session_ciphertext is None
    assert row.access_token_expires_at is None
    assert row.lease_id is None
    assert row.invalidated_reason


def test_429_with_an_expired_token_invalidates_nothing(
    service: LeaseService,
    emulator: GarminEmulator,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    old = accounts.seed(USER, timedelta(minutes=-5))
    emulator.fail_next(EXCHANGE_PATH, 429, retry_after=120)

    with pytest.raises(GarminRateLimited) as caught:
        service.lease_session(USER, "worker-a", None)

    assert caught.value.retry_after_seconds == 120
    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.ACTIVE
    assert row.lease_id is None
    assert stored_tokens(db_sessionmaker, box, USER) == old
    # Until Garmin's Retry-After has passed, grants are refused without asking Garmin.
    clock.advance(119)
    with pytest.raises(GarminRateLimited) as waiting:
        service.lease_session(USER, "worker-a", None)
    assert waiting.value.retry_after_seconds == pytest.approx(1, abs=0.01)
    assert emulator.request_count(EXCHANGE_PATH) == 1
    # Then the next grant refreshes.
    clock.advance(1)
    assert service.lease_session(USER, "worker-a", None).tokens.oauth1 == old.oauth1
    assert accounts.exchanges(USER) == 1


def test_429_with_a_still_valid_token_hands_it_out(
    service: LeaseService,
    emulator: GarminEmulator,
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    old = accounts.seed(
        USER, timedelta(minutes=2)
    )  # valid now, but not for the whole 5-minute lease
    emulator.fail_next(EXCHANGE_PATH, 429)

    grant = service.lease_session(USER, "worker-a", None)

    assert grant.tokens == old
    assert emulator.request_count(EXCHANGE_PATH) == 1
    row = read_row(db_sessionmaker, USER)
    assert (row.state, row.lease_id, row.session_version) == (
        SessionState.ACTIVE,
        lease_digest(grant.lease.lease_id),
        1,
    )
    assert stored_tokens(db_sessionmaker, box, USER) == old
