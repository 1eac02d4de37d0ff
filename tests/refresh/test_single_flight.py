"""One refresh per rotation across replicas: DI refresh tokens rotate, and a second refresh
with the same token would lose the account. Both databases, two replicas (two engines), the
emulator over real HTTP counting every rotation and every reuse of a dead token."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http import HTTPStatus

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
    UpstreamError,
)
from auth_service.domain.models import GarminTokens, SessionKind, SessionState
from auth_service.services.central_refresh import CENTRAL_REFRESH_REJECTED
from auth_service.storage.secrets import SecretBox
from auth_service.storage.session_repository import SqlSessionRepository
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import DI_TOKEN_PATH, FAULT_RESET, GarminEmulator
from tests.leases import read_row, stored_tokens

from . import ASKER, DiAccounts, Replica, during_next_refresh

pytestmark = pytest.mark.timeout(120)

USER = "di-user"
ASKERS = 16


def test_16_askers_on_two_replicas_cause_exactly_one_refresh(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    old = accounts.seed(USER, access_in=timedelta(seconds=-5))
    version = read_row(db_sessionmaker, USER).session_version
    # Garmin takes a while: every asker arrives while the one refresh is in flight.
    emulator.fail_next(DI_TOKEN_PATH, None, delay=0.3)
    barrier = threading.Barrier(ASKERS)

    def ask(index: int) -> object:
        barrier.wait()
        replica = replicas[index % 2]
        if index % 4 == 0:
            return replica.refresher.refresh(USER, version, ASKER).tokens
        return replica.sessions.get_status(USER, validate=True)

    with ThreadPoolExecutor(max_workers=ASKERS) as pool:
        results = list(pool.map(ask, range(ASKERS)))

    assert accounts.refreshes(USER) == 1
    assert accounts.reuses(USER) == 0
    stored = stored_tokens(db_sessionmaker, box, USER)
    assert stored is not None
    assert stored.oauth2.refresh_token != old.oauth2.refresh_token
    row = read_row(db_sessionmaker, USER)
    assert (row.state, row.session_version) == (SessionState.ACTIVE, version + 1)
    assert row.refresh_claim_id is None
    for result in results:
        state = getattr(result, "state", SessionState.ACTIVE)
        assert state is SessionState.ACTIVE
    handed = [r for r in results if not hasattr(r, "state")]
    assert handed
    assert all(tokens == stored for tokens in handed)


def test_50_rounds_of_rotation_alternating_replicas_never_reuse_a_token(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    accounts.seed(USER)
    seen: set[str] = set()
    for round_ in range(50):
        version = read_row(db_sessionmaker, USER).session_version
        refreshed = replicas[round_ % 2].refresher.refresh(USER, version, ASKER)
        assert refreshed.by_us
        assert refreshed.tokens == stored_tokens(db_sessionmaker, box, USER)
        assert refreshed.tokens.oauth2.refresh_token not in seen
        seen.add(refreshed.tokens.oauth2.refresh_token)
    assert accounts.refreshes(USER) == 50
    assert accounts.reuses(USER) == 0
    live = set(accounts.emulator.live_refresh_tokens(accounts.email(USER)))
    latest = refreshed.tokens.oauth2.refresh_token
    assert latest in live
    assert not (seen - {latest}) & live


def test_a_stale_version_uses_the_new_tokens_without_calling_garmin(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed(USER)
    version = read_row(db_sessionmaker, USER).session_version
    first = replicas[0].refresher.refresh(USER, version, ASKER)
    before = emulator.request_count(DI_TOKEN_PATH)

    late = replicas[1].refresher.refresh(USER, version, ASKER)

    assert not late.by_us
    assert late.tokens == first.tokens
    assert emulator.request_count(DI_TOKEN_PATH) == before


def test_invalid_grant_after_revocation_ends_the_session(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    accounts.seed(USER, access_in=timedelta(seconds=-5))
    accounts.emulator.revoke_tokens(accounts.email(USER))

    with pytest.raises(GarminSessionRejected):
        replicas[0].leases.lease_session(USER, "worker-a", None)

    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.AUTH_EXPIRED
    assert row.session_ciphertext is None
    assert (row.access_token_expires_at, row.refresh_token_expires_at) == (None, None)
    assert (row.session_kind, row.lease_id, row.refresh_claim_id) == (None, None, None)
    assert row.invalidated_reason == CENTRAL_REFRESH_REJECTED
    assert row.invalidated_at == clock.now()
    assert accounts.reuses(USER) == 0


def test_invalid_grant_when_another_replica_already_rotated_ends_nothing(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    old = accounts.seed(USER)
    version = read_row(db_sessionmaker, USER).session_version
    newer: list[GarminTokens] = []

    def rotate_elsewhere() -> None:
        # Someone else (a claim that expired under a stalled holder) rotates the pair at
        # Garmin and stores it while our request with the old token is still on its way.
        newer.append(upstream.refresh(old))
        with db_sessionmaker.begin() as session:
            repository = SqlSessionRepository(session, box)
            locked = repository.lock(USER)
            assert locked is not None
            repository.store_rotated(
                USER,
                version=version,
                tokens=newer[0],
                now=clock.now(),
                keepalive_not_before=None,
                replaced=locked,
            )

    with during_next_refresh(emulator, rotate_elsewhere):
        refreshed = replicas[0].refresher.refresh(USER, version, ASKER)

    assert accounts.reuses(USER) == 1  # ours, of the token rotated meanwhile: invalid_grant
    assert not refreshed.by_us
    assert refreshed.tokens == newer[0]
    row = read_row(db_sessionmaker, USER)
    assert (row.state, row.invalidated_at) == (SessionState.ACTIVE, None)
    assert stored_tokens(db_sessionmaker, box, USER) == newer[0]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        pytest.param(429, GarminRateLimited, id="429"),
        pytest.param(503, GarminUnavailable, id="5xx"),
        pytest.param(FAULT_RESET, GarminUnavailable, id="reset"),
        pytest.param("timeout", GarminUnavailable, id="timeout"),
    ],
)
def test_busy_garmin_never_ends_a_session(  # noqa: PLR0917 - fixtures and parameters
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    fault: int | str,
    error: type[UpstreamError],
    clock: FakeClock,
) -> None:
    tokens = accounts.seed(USER, access_in=timedelta(seconds=-5))
    version = read_row(db_sessionmaker, USER).session_version
    if fault == "timeout":
        emulator.fail_next(DI_TOKEN_PATH, "hang", delay=3)
    else:
        emulator.fail_next(DI_TOKEN_PATH, fault)

    with pytest.raises(error):
        replicas[0].leases.lease_session(USER, "worker-a", None)

    row = read_row(db_sessionmaker, USER)
    assert (row.state, row.session_version, row.invalidated_at) == (
        SessionState.ACTIVE,
        version,
        None,
    )
    assert row.refresh_claim_id is None  # released: the next asker may try at once
    assert row.lease_id is None
    assert stored_tokens(db_sessionmaker, box, USER) == tokens
    emulator.clear_faults()
    if fault == HTTPStatus.TOO_MANY_REQUESTS:
        # Garmin asked for a wait (no Retry-After: the default 60 s): no replica asks again
        # before it has passed.
        calls = emulator.request_count(DI_TOKEN_PATH)
        with pytest.raises(GarminRateLimited) as refused:
            replicas[1].leases.lease_session(USER, "worker-b", None)
        assert refused.value.held_back == "account_cooldown"
        assert emulator.request_count(DI_TOKEN_PATH) == calls
        clock.advance(61)
    grant = replicas[1].leases.lease_session(USER, "worker-b", None)
    assert grant.tokens.kind is SessionKind.DI_OAUTH2
    assert accounts.refreshes(USER) == 1
    assert accounts.reuses(USER) == 0


def test_lease_refreshes_when_the_refresh_token_would_die_during_the_lease(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    # The access token outlives the lease, but the refresh token dies in two minutes.
    old = accounts.seed(USER, refresh_in=timedelta(minutes=2))

    grant = replicas[0].leases.lease_session(USER, "worker-a", timedelta(minutes=5))

    assert accounts.refreshes(USER) == 1
    assert grant.tokens.oauth2.refresh_token != old.oauth2.refresh_token
    dies_at = grant.tokens.oauth2.refresh_token_expires_at
    assert dies_at is not None
    assert dies_at > clock.now() + timedelta(days=29)
    assert grant.status.refresh_token_expires_at == dies_at


def test_a_refresh_omitting_the_refresh_expiry_keeps_the_stated_lifetime(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    accounts.seed(USER, access_in=timedelta(seconds=-5))
    assert accounts.emulator.di.omit_refresh_expiry_on_refresh

    replicas[0].leases.lease_session(USER, "worker-a", None)

    row = read_row(db_sessionmaker, USER)
    assert row.refresh_token_expires_at is not None
    assert row.refresh_token_expires_at > clock.now() + timedelta(days=29)


def test_the_login_that_replaces_a_session_during_its_refresh_wins(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    accounts.seed(USER)
    version = read_row(db_sessionmaker, USER).session_version
    relogin: list[object] = []

    with during_next_refresh(emulator, lambda: relogin.append(accounts.seed(USER))):
        refreshed = replicas[0].refresher.refresh(USER, version, ASKER)

    assert not refreshed.by_us
    assert refreshed.tokens == relogin[0] == stored_tokens(db_sessionmaker, box, USER)
