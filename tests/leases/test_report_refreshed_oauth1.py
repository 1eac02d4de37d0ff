"""ReportRefreshed of a garth session must carry the stored OAuth1 token whole (README: a
report "whose OAuth1 token (garth) ... is not the stored one's" is INVALID_ARGUMENT).

Before, services/lease_holders.check_same_account compared only the OAuth1's `oauth_token`,
and report_refreshed then stored the reported OAuth1 as it came. A garth exchange never
changes the OAuth1 token, so a real refresh reports it unchanged; a report whose OAuth1 lost
its mfa_token (optional in the proto, easy for a holder to drop when it rebuilds the session)
or carried another secret was accepted and replaced the stored one: the session's next
exchange was refused (401) and the service ended it, for good (garth sessions cannot be signed
in again). Such a report is now refused, nothing stored; an accepted one keeps the stored
OAuth1 (its MFA expiry included) with the reported OAuth2.

Real garth adapter, emulator over HTTP, both databases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import InvalidArgument
from auth_service.domain.models import GarminTokens, LoginNeedsMfa, OAuth1Token, SessionState
from auth_service.services.leases import LeaseService
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_emulator import GarminEmulator
from tests.leases import read_row, seed_active, stored_tokens, with_expiry

PASSWORD = "pw"
CODE = "424242"


MfaSession = Callable[..., GarminTokens]


@pytest.fixture
def mfa_session(
    upstream: GarthUpstream,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> MfaSession:
    """Signs in an MFA account (its OAuth1 carries an MFA token) and stores its garth session
    ACTIVE, with an access token that expires in `expires_in`."""

    def session(
        email: str, user_id: str, expires_in: timedelta = timedelta(hours=2)
    ) -> GarminTokens:
        emulator.add_user(email, PASSWORD, mfa=True, mfa_code=CODE)
        pending = upstream.login(email, PASSWORD)
        assert isinstance(pending, LoginNeedsMfa)
        tokens = with_expiry(upstream.resume_mfa(pending.pending, CODE), clock.now() + expires_in)
        assert tokens.oauth1_token().mfa_token
        assert tokens.oauth1_token().mfa_expires_at is not None
        seed_active(db_sessionmaker, box, user_id, tokens, clock.now())
        return tokens

    return session


def _with_oauth1(tokens: GarminTokens, oauth1: OAuth1Token) -> GarminTokens:
    return dataclasses.replace(tokens, oauth1=oauth1)


@pytest.mark.parametrize(
    ("mangle", "field"),
    [
        (lambda o1: dataclasses.replace(o1, mfa_token=None), "session.oauth1.mfa_token"),
        (
            lambda o1: dataclasses.replace(o1, oauth_token_secret="another-secret"),
            "session.oauth1.oauth_token_secret",
        ),
    ],
)
def test_a_report_with_a_mangled_oauth1_is_refused_and_stores_nothing(
    service: LeaseService,
    upstream: GarthUpstream,
    mfa_session: MfaSession,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    mangle: Callable[[OAuth1Token], OAuth1Token],
    field: str,
) -> None:
    tokens = mfa_session("mfa@example.com", "u-1")
    grant = service.lease_session("u-1", "worker-full", timedelta(minutes=5))
    refreshed = upstream.refresh(tokens)  # the holder's own garth refresh

    mangled = _with_oauth1(refreshed, mangle(refreshed.oauth1_token()))

    # Before: accepted, and the mangled OAuth1 stored.
    with pytest.raises(InvalidArgument) as refused:
        service.report_refreshed(grant.lease.lease_id, mangled)

    assert [violation.field for violation in refused.value.violations] == [field]
    assert stored_tokens(db_sessionmaker, box, "u-1") == tokens


def test_a_refused_report_leaves_the_session_alive_at_its_next_exchange(
    service: LeaseService,
    upstream: GarthUpstream,
    mfa_session: MfaSession,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    tokens = mfa_session("mfa2@example.com", "u-2", expires_in=timedelta(minutes=10))
    grant = service.lease_session("u-2", "worker-full", timedelta(minutes=5))
    refreshed = upstream.refresh(tokens)
    without_mfa_token = dataclasses.replace(refreshed.oauth1_token(), mfa_token=None)
    with pytest.raises(InvalidArgument):
        service.report_refreshed(grant.lease.lease_id, _with_oauth1(refreshed, without_mfa_token))
    service.release_lease(grant.lease.lease_id, None)

    clock.advance(11 * 60)  # the stored access token has expired: the next grant exchanges
    service.lease_session("u-2", "worker-full", timedelta(minutes=5))

    row = read_row(db_sessionmaker, "u-2")
    # Before: AUTH_EXPIRED, Garmin's "mfa_token required" 401 at the exchange.
    assert row.state is SessionState.ACTIVE, row.invalidated_reason
    assert emulator.exchange_count("mfa2@example.com") == 3  # sign-in, holder, service


def test_an_accepted_report_keeps_the_stored_oauth1(
    service: LeaseService,
    upstream: GarthUpstream,
    mfa_session: MfaSession,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    tokens = mfa_session("mfa3@example.com", "u-3")
    grant = service.lease_session("u-3", "worker-full", timedelta(minutes=5))
    refreshed = upstream.refresh(tokens)

    # The holder's copy lost the MFA token's expiry (nothing the exchange signs with).
    without_expiry = dataclasses.replace(refreshed.oauth1_token(), mfa_expires_at=None)
    service.report_refreshed(grant.lease.lease_id, _with_oauth1(refreshed, without_expiry))

    stored = stored_tokens(db_sessionmaker, box, "u-3")
    assert stored is not None
    assert stored.oauth1 == tokens.oauth1
    assert stored.oauth2.access_token == refreshed.oauth2.access_token
