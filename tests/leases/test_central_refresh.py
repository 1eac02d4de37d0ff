"""Central refresh at grant time, every branch, both backends: Garmin is the emulator over
HTTP (fault injection for its failures), reached through the real garth adapter."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import (
    DomainError,
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
    LeaseHeld,
    LeaseLost,
    SessionNotActive,
    UpstreamError,
)
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import GarminTokens, LeaseGrant, SessionState
from auth_service.services.central_refresh import CENTRAL_REFRESH_REJECTED
from auth_service.services.leases import LeaseService
from auth_service.storage.secrets import SecretBox
from garmin_client.logging_setup import redact
from garmin_emulator import EXCHANGE_PATH, FAULT_RESET, GarminEmulator

from . import (
    GarminAccounts,
    during_next_exchange,
    read_row,
    seed_active,
    stored_tokens,
)

USER = "user-1"
HOLDER = "worker-a"
TTL = timedelta(seconds=300)
# Nested deeper than Python's JSON parser can recurse: an answer nobody can read.
TOO_DEEP_JSON = "[" * 100_000 + "]" * 100_000


@dataclass(frozen=True)
class Busy:
    """Garmin saying "later" rather than "no" at the exchange, and what the adapter raises."""

    fault: int | str  # an HTTP status, or FAULT_RESET
    error: type[UpstreamError]
    retry_after: int | None = None


def test_token_outliving_the_lease_is_not_refreshed(
    service: LeaseService, accounts: GarminAccounts, emulator: GarminEmulator
) -> None:
    tokens = accounts.seed(USER, TTL + timedelta(seconds=1))
    grant = service.lease_session(USER, HOLDER, TTL)
    assert grant.tokens == tokens
    assert emulator.request_count(EXCHANGE_PATH) == 0


@pytest.mark.parametrize("next_session", [False, True], ids=["lease", "lease-next"])
def test_token_expiring_with_the_lease_is_refreshed_and_stored(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
    next_session: bool,
) -> None:
    old = accounts.seed(USER, TTL)  # expires exactly when the lease would
    version = read_row(db_sessionmaker, USER).session_version
    clock.advance(1)

    grant = (
        service.lease_next_session(HOLDER, None, None)
        if next_session
        else service.lease_session(USER, HOLDER, None)
    )

    assert grant is not None
    assert emulator.request_count(EXCHANGE_PATH) == 1
    assert accounts.exchanges(USER) == 1
    fresh = grant.tokens
    accounts.assert_issued_by_garmin(fresh, old, USER)
    assert fresh.oauth2.expires_at > grant.lease.expires_at
    assert stored_tokens(db_sessionmaker, box, USER) == fresh
    assert grant.status.session_version == version + 1
    assert grant.status.last_validated_at == clock.now()
    assert grant.status.access_token_expires_at == fresh.oauth2.expires_at
    assert grant.status.lease == grant.lease
    # The holder's lease is intact: it can report and release as usual.
    service.release_lease(grant.lease.lease_id, clock.now())


def test_rejected_refresh_invalidates_and_answers_not_active(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    accounts.seed(USER, timedelta(seconds=-5))
    accounts.revoke(USER)  # the exchange answers 401

    with pytest.raises(GarminSessionRejected):
        service.lease_session(USER, HOLDER, None)

    assert emulator.request_count(EXCHANGE_PATH) == 1
    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.AUTH_EXPIRED
    assert row.session_ciphertext is None
    assert row.access_token_expires_at is None
    assert row.invalidated_reason == CENTRAL_REFRESH_REJECTED
    assert row.invalidated_at == clock.now()
    assert row.lease_id is None
    assert row.fencing_token == 1
    with pytest.raises(SessionNotActive):
        service.lease_session(USER, HOLDER, None)
    assert emulator.request_count(EXCHANGE_PATH) == 1


@pytest.mark.parametrize(
    "busy",
    [
        pytest.param(Busy(429, GarminRateLimited, retry_after=30), id="429"),
        pytest.param(Busy(503, GarminUnavailable), id="5xx"),
    ],
)
def test_busy_garmin_hands_out_a_still_valid_token(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    busy: Busy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens = accounts.seed(USER, timedelta(seconds=60))
    version = read_row(db_sessionmaker, USER).session_version
    emulator.fail_next(EXCHANGE_PATH, busy.fault, retry_after=busy.retry_after)

    with caplog.at_level(logging.WARNING, logger="auth_service.services.central_refresh"):
        grant = service.lease_session(USER, HOLDER, None)

    assert emulator.request_count(EXCHANGE_PATH) == 1
    # The refresh failed with the expected error: the service says which in its warning.
    assert busy.error.__name__ in caplog.text
    assert grant.tokens == tokens
    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.ACTIVE
    assert row.session_version == version
    assert row.lease_id == lease_digest(grant.lease.lease_id)
    assert stored_tokens(db_sessionmaker, box, USER) == tokens


@pytest.mark.parametrize(
    "busy",
    [
        pytest.param(Busy(429, GarminRateLimited), id="429"),  # without Retry-After
        pytest.param(Busy(500, GarminUnavailable), id="5xx"),
        pytest.param(Busy(FAULT_RESET, GarminUnavailable), id="reset"),
    ],
)
def test_busy_garmin_with_an_expired_token_answers_the_error_and_frees_the_session(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
    busy: Busy,
) -> None:
    tokens = accounts.seed(USER, timedelta(0))
    emulator.fail_next(EXCHANGE_PATH, busy.fault)

    with pytest.raises(busy.error) as caught:
        service.lease_session(USER, HOLDER, None)

    if isinstance(caught.value, GarminRateLimited):
        # No Retry-After: the account waits the default (GARMIN_AUTH_RATE_LIMIT_DEFAULT_WAIT).
        assert caught.value.retry_after_seconds == 60
    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.ACTIVE
    assert row.invalidated_at is None
    assert stored_tokens(db_sessionmaker, box, USER) == tokens
    assert row.lease_id is None  # released, not stuck until the ttl runs out
    assert row.last_sync_attempt_at == clock.now()  # the queue moves on to other users
    if isinstance(caught.value, GarminRateLimited):
        clock.advance(60)  # Garmin asked for a wait: nothing is sent before it has passed
    # Once Garmin answers again the next grant refreshes.
    assert service.lease_session(USER, HOLDER, None).lease.fencing_token == 2
    assert accounts.exchanges(USER) == 1


def test_unreadable_exchange_answer_is_unavailable_and_frees_the_session(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed(USER, timedelta(0))
    emulator.fail_next(EXCHANGE_PATH, 200, body=TOO_DEEP_JSON)

    with pytest.raises(GarminUnavailable):
        service.lease_session(USER, HOLDER, None)
    assert emulator.request_count(EXCHANGE_PATH) == 1
    row = read_row(db_sessionmaker, USER)
    assert (row.state, row.lease_id) == (SessionState.ACTIVE, None)


def test_login_during_refresh_wins_over_the_refreshed_tokens(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    accounts.seed(USER, timedelta(0))
    relogin = accounts.login(USER, timedelta(days=1))
    issued_before = accounts.exchanges(USER)

    def login_meanwhile() -> None:
        seed_active(db_sessionmaker, box, USER, relogin, clock.now())
        # Garmin has not answered the exchange yet.
        assert accounts.exchanges(USER) == issued_before

    with during_next_exchange(emulator, login_meanwhile), pytest.raises(LeaseLost):
        service.lease_session(USER, HOLDER, None)
    assert accounts.exchanges(USER) == issued_before + 1  # refreshed, then dropped
    assert stored_tokens(db_sessionmaker, box, USER) == relogin
    assert read_row(db_sessionmaker, USER).lease_id is None


def test_login_during_a_rejected_refresh_is_not_invalidated(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    accounts.seed(USER, timedelta(0))
    accounts.revoke(USER)  # the stored session is dead at Garmin...
    relogin = accounts.login(USER, timedelta(days=1))  # ...and the user logs in again

    def login_meanwhile() -> None:
        seed_active(db_sessionmaker, box, USER, relogin, clock.now())

    with during_next_exchange(emulator, login_meanwhile), pytest.raises(LeaseLost):
        service.lease_session(USER, HOLDER, None)
    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.ACTIVE
    assert stored_tokens(db_sessionmaker, box, USER) == relogin


def test_lease_expiring_during_refresh_keeps_the_refreshed_tokens(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    # Issue 12 changed this on purpose: what Garmin issued belongs to the session, not to
    # the lease, and is stored either way (a rotated DI pair must never be dropped); the
    # holder whose lease ended still gets LEASE_LOST and nothing to use.
    tokens = accounts.seed(USER, timedelta(0))

    with during_next_exchange(emulator, lambda: clock.advance(10)), pytest.raises(LeaseLost):
        service.lease_session(USER, HOLDER, timedelta(seconds=5))
    assert accounts.exchanges(USER) == 1
    stored = stored_tokens(db_sessionmaker, box, USER)
    assert stored is not None
    accounts.assert_issued_by_garmin(stored, tokens, USER)
    assert read_row(db_sessionmaker, USER).lease_id is not None  # expired, not ended


def test_only_the_granted_caller_refreshes_when_many_ask_at_once(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    old = accounts.seed(USER, timedelta(0))
    # Garmin takes a while to answer the exchange; the others ask meanwhile.
    emulator.fail_next(EXCHANGE_PATH, None, delay=0.2)
    barrier = threading.Barrier(8)

    def ask(index: int) -> LeaseGrant | Exception:
        barrier.wait()
        try:
            return service.lease_session(USER, f"worker-{index}", None)
        except LeaseHeld as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, range(8)))

    grants = [r for r in results if isinstance(r, LeaseGrant)]
    assert len(grants) == 1
    assert emulator.request_count(EXCHANGE_PATH) == 1
    assert accounts.exchanges(USER) == 1
    accounts.assert_issued_by_garmin(grants[0].tokens, old, USER)
    assert grants[0].tokens == stored_tokens(db_sessionmaker, box, USER)


def _two_due_with_expired_tokens(
    service: LeaseService, accounts: GarminAccounts, clock: FakeClock
) -> GarminTokens:
    """u-b and u-a, synced a minute apart ("u-b" longest ago, so it is the most overdue
    although "u-a" sorts first), then logged in again (sync history kept) with access tokens
    already expired on our side: both need a central refresh at their grant. Returns u-a's."""
    for user_id in ("u-b", "u-a"):
        accounts.seed(user_id, timedelta(days=2))
        synced = service.lease_session(user_id, HOLDER, None)
        service.release_lease(synced.lease.lease_id, clock.now())
        clock.advance(60)
    accounts.seed("u-b", timedelta(minutes=-5))
    tokens = accounts.seed("u-a", timedelta(minutes=-5))
    clock.advance(60)
    return tokens


def test_lease_next_skips_a_due_session_whose_refresh_garmin_rejects(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    ok = _two_due_with_expired_tokens(service, accounts, clock)
    # Garmin has since revoked u-b's session.
    accounts.revoke("u-b")

    grant = service.lease_next_session(HOLDER, None, None)

    assert grant is not None
    assert grant.lease.user_id == "u-a"
    assert emulator.request_count(EXCHANGE_PATH) == 2  # u-b's refused, then u-a's
    assert (accounts.exchanges("u-b"), accounts.exchanges("u-a")) == (0, 1)
    accounts.assert_issued_by_garmin(grant.tokens, ok, "u-a")
    assert stored_tokens(db_sessionmaker, box, "u-a") == grant.tokens
    rejected = read_row(db_sessionmaker, "u-b")
    assert rejected.state is SessionState.AUTH_EXPIRED
    assert rejected.session_ciphertext is None
    assert rejected.invalidated_reason == CENTRAL_REFRESH_REJECTED
    assert rejected.lease_id is None
    assert service.lease_next_session(HOLDER, None, None) is None


def test_no_secret_reaches_a_log_line_or_an_error_message(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = accounts.seed(USER, timedelta(seconds=60))
    messages = []
    emulator.fail_next(EXCHANGE_PATH, 429)
    grant = service.lease_session(USER, HOLDER, None)  # handed out with a warning
    for call in (
        lambda: service.lease_session(USER, "worker-b", None),
        lambda: service.report_refreshed("A" * 32, tokens),
    ):
        with pytest.raises(DomainError) as caught:
            call()
        messages.append(caught.value.message)
    service.report_refreshed(grant.lease.lease_id, tokens)
    accounts.revoke(USER)
    clock.advance(600)
    with pytest.raises(GarminSessionRejected) as rejected:
        service.lease_session(USER, HOLDER, None)
    messages.append(rejected.value.message)

    secrets = (
        tokens.oauth1_token().oauth_token,
        tokens.oauth1_token().oauth_token_secret,
        tokens.oauth2.access_token,
        tokens.oauth2.refresh_token,
        grant.lease.lease_id,
    )
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("auth_service")]
    assert ours
    text = "\n".join(ours + messages)
    for secret in secrets:
        assert secret not in text
    # Libraries under the adapter log requests at DEBUG; what they say reaches a log line
    # only through the service's redaction filter.
    shown = "\n".join(redact(r.getMessage()) for r in caplog.records)
    for secret in secrets:
        assert secret not in shown


def test_lease_next_skips_a_due_session_whose_lease_ends_during_its_refresh(
    service: LeaseService,
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    """The user signs in again while the service refreshes the due session it just leased:
    that lease ended, so LeaseNextSession leases the next due session instead of answering
    LEASE_LOST (which, with a release on the call, would say the release was refused)."""
    _two_due_with_expired_tokens(service, accounts, clock)
    relogin = accounts.login("u-b", timedelta(days=1))

    def login_meanwhile() -> None:
        seed_active(db_sessionmaker, box, "u-b", relogin, clock.now())

    with during_next_exchange(emulator, login_meanwhile):
        grant = service.lease_next_session(HOLDER, None, None)

    # The lease lost was skipped; u-b, signed in again, is still the most overdue: it is
    # leased anew, with its new session (which needs no refresh).
    assert grant is not None
    assert grant.lease.user_id == "u-b"
    assert grant.tokens == relogin
    assert read_row(db_sessionmaker, "u-b").fencing_token == grant.lease.fencing_token
