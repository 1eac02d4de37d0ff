"""The DI provider's refresh and validation against the emulator over HTTP: rotation with the
session's own client id and domain, the refresh expiry when Garmin omits it, invalid_grant
as the only rejection, and Garmin's busy answers leaving the session alive."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from auth_service.domain.errors import (
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
)
from auth_service.domain.jwt_payload import di_issuer_domain
from garmin_emulator import DI_TOKEN_PATH, FAULT_HANG, KNOWN_DI_CLIENT_IDS, GarminEmulator

from .conftest import locally_expired
from .di_provider import di_upstream, issued_tokens

pytestmark = pytest.mark.timeout(60)
EMAIL = "rotor@example.com"


@pytest.fixture(autouse=True)
def di_user(emulator: GarminEmulator) -> None:
    emulator.add_user(EMAIL, "pw")


def test_refresh_rotates_with_the_sessions_client_id(emulator: GarminEmulator) -> None:
    tokens = issued_tokens(emulator, EMAIL, client_id=KNOWN_DI_CLIENT_IDS[2])
    fresh = di_upstream(emulator).refresh(tokens)

    assert fresh.oauth2.refresh_token != tokens.oauth2.refresh_token
    assert fresh.oauth2.access_token != tokens.oauth2.access_token
    assert fresh.di_client_id == KNOWN_DI_CLIENT_IDS[2]
    assert emulator.di_refresh_count(EMAIL) == 1
    assert emulator.live_refresh_tokens(EMAIL) == [fresh.oauth2.refresh_token]
    [request] = emulator.token_requests
    assert (request.host, request.client_id) == ("diauth.garmin.com", KNOWN_DI_CLIENT_IDS[2])
    assert request.app_headers  # the app headers ride along


def test_a_garmin_cn_session_refreshes_at_diauth_garmin_cn(emulator: GarminEmulator) -> None:
    tokens = issued_tokens(emulator, EMAIL, domain="garmin.cn")  # a pair diauth.garmin.cn issued
    fresh = di_upstream(emulator).refresh(tokens)
    assert fresh.domain == "garmin.cn"
    assert di_issuer_domain(fresh.oauth2.access_token) == "garmin.cn"
    assert [(r.host, r.outcome) for r in emulator.token_requests] == [
        ("diauth.garmin.cn", "issued")
    ]
    assert emulator.live_refresh_tokens(EMAIL) == [fresh.oauth2.refresh_token]


def test_an_omitted_refresh_expiry_is_reckoned_from_the_last_stated_lifetime(
    emulator: GarminEmulator,
) -> None:
    assert emulator.di.omit_refresh_expiry_on_refresh
    tokens = dataclasses.replace(
        issued_tokens(emulator, EMAIL), refresh_token_lifetime_seconds=10 * 86400
    )
    fresh = di_upstream(emulator).refresh(tokens)
    expires = fresh.oauth2.refresh_token_expires_at
    assert expires is not None
    assert abs(expires - (datetime.now(UTC) + timedelta(days=10))) < timedelta(minutes=1)
    assert fresh.refresh_token_lifetime_seconds == 10 * 86400


def test_without_any_stated_lifetime_the_configured_default_applies(
    emulator: GarminEmulator,
) -> None:
    tokens = dataclasses.replace(
        issued_tokens(emulator, EMAIL), refresh_token_lifetime_seconds=None
    )
    fresh = di_upstream(emulator, refresh_lifetime_seconds=3 * 86400).refresh(tokens)
    expires = fresh.oauth2.refresh_token_expires_at
    assert expires is not None
    assert abs(expires - (datetime.now(UTC) + timedelta(days=3))) < timedelta(minutes=1)


def test_a_stated_lifetime_wins(emulator: GarminEmulator) -> None:
    emulator.di.omit_refresh_expiry_on_refresh = False
    fresh = di_upstream(emulator).refresh(issued_tokens(emulator, EMAIL))
    assert fresh.refresh_token_lifetime_seconds == pytest.approx(
        emulator.di.refresh_token_expires_in, abs=5
    )


def test_a_dead_refresh_token_is_a_session_rejection(emulator: GarminEmulator) -> None:
    tokens = issued_tokens(emulator, EMAIL)
    upstream = di_upstream(emulator)
    upstream.refresh(tokens)
    with pytest.raises(GarminSessionRejected):
        upstream.refresh(tokens)  # the rotated-out token


def test_revoked_session_is_rejected(emulator: GarminEmulator) -> None:
    tokens = issued_tokens(emulator, EMAIL)
    emulator.revoke_tokens(EMAIL)
    with pytest.raises(GarminSessionRejected):
        di_upstream(emulator).refresh(tokens)


@pytest.mark.parametrize(
    ("fault", "error"),
    [(429, GarminRateLimited), (503, GarminUnavailable), (FAULT_HANG, GarminUnavailable)],
)
def test_busy_garmin_never_rejects_and_the_refresh_is_never_repeated(
    emulator: GarminEmulator, fault: int | str, error: type[Exception]
) -> None:
    tokens = issued_tokens(emulator, EMAIL)
    emulator.fail_next(DI_TOKEN_PATH, fault, delay=1.0 if fault == FAULT_HANG else 0.0)
    upstream = di_upstream(emulator)
    with pytest.raises(error):
        upstream.refresh(tokens)
    # One POST only: a repeated rotation could present a token Garmin already rotated.
    assert emulator.request_count(DI_TOKEN_PATH) == 1
    assert emulator.live_refresh_tokens(EMAIL) == [tokens.oauth2.refresh_token]


def test_validate_uses_the_bearer_token_and_refreshes_an_expired_one(
    emulator: GarminEmulator,
) -> None:
    tokens = issued_tokens(emulator, EMAIL)
    upstream = di_upstream(emulator)
    assert upstream.validate(tokens, allow_refresh=True) is tokens
    assert emulator.api_calls[-1].token_kind == "di"

    fresh = upstream.validate(locally_expired(tokens), allow_refresh=True)
    assert fresh.oauth2.refresh_token != tokens.oauth2.refresh_token
    assert emulator.di_refresh_count(EMAIL) == 1


def test_validate_without_refresh_rejects_a_token_garmin_calls_not_active(
    emulator: GarminEmulator,
) -> None:
    tokens = issued_tokens(emulator, EMAIL)
    emulator.revoke_tokens(EMAIL)
    with pytest.raises(GarminSessionRejected):
        di_upstream(emulator).validate(tokens, allow_refresh=False)
    with pytest.raises(GarminSessionRejected):
        di_upstream(emulator).validate(tokens, allow_refresh=True)
    assert emulator.di_refresh_count(EMAIL) == 0


ODD_LIFETIMES = {
    "expires_in as text": {"expires_in": "105487"},
    "expires_in zero": {"expires_in": 0},
    "expires_in negative": {"expires_in": -5},
    "expires_in absurd": {"expires_in": 10**15},
    "expires_in left out": {"expires_in": None},
    "refresh lifetime as text": {"refresh_token_expires_in": "2591999"},
    "refresh lifetime zero": {"refresh_token_expires_in": 0},
    "refresh lifetime absurd": {"refresh_token_expires_in": 10**15},
    "refresh lifetime not a number": {"refresh_token_expires_in": [1]},
}


@pytest.mark.parametrize("odd", ODD_LIFETIMES.values(), ids=ODD_LIFETIMES)
def test_an_odd_lifetime_in_a_rotation_never_drops_the_new_pair(
    emulator: GarminEmulator, odd: dict[str, object]
) -> None:
    """Once Garmin answered a refresh the old refresh token is dead: an optional field we
    cannot read must not throw the new pair away (before: GarminUnavailable, or for an
    absurd lifetime an OverflowError, and the session's next refresh met invalid_grant)."""
    tokens = issued_tokens(emulator, EMAIL)
    emulator.di.omit_refresh_expiry_on_refresh = False
    emulator.di.answer_overrides = dict(odd)
    upstream = di_upstream(emulator)
    fresh = upstream.refresh(tokens)

    assert fresh.oauth2.refresh_token != tokens.oauth2.refresh_token
    # The access expiry: expires_in when readable, else the JWT's exp; both say the same.
    expected = datetime.now(UTC) + timedelta(seconds=emulator.di.access_token_expires_in)
    assert abs(fresh.oauth2.expires_at - expected) < timedelta(minutes=1)
    refresh_expires = fresh.oauth2.refresh_token_expires_at
    assert refresh_expires is not None
    assert datetime.now(UTC) < refresh_expires < datetime.now(UTC) + timedelta(days=400)
    # The pair we kept is the live one: it rotates again, and no dead token was presented.
    emulator.di.answer_overrides = {}
    upstream.refresh(fresh)
    assert emulator.refresh_token_reuses(EMAIL) == 0


def test_a_rotation_keeps_the_refresh_expiry_when_configured_to(
    emulator: GarminEmulator,
) -> None:
    """Whether a rotation restarts the refresh token's lifetime is uncertain (shared facts
    file): GARMIN_AUTH_DI_REFRESH_EXPIRY_ON_ROTATION=keep hands the old expiry on, as an
    emulator that does not restart it behaves; the default restarts it."""
    emulator.di.rotation_restarts_refresh_expiry = False
    soon = datetime.now(UTC) + timedelta(days=3)
    issued = issued_tokens(emulator, EMAIL)
    tokens = dataclasses.replace(
        issued, oauth2=dataclasses.replace(issued.oauth2, refresh_token_expires_at=soon)
    )
    kept = di_upstream(emulator, rotation_restarts_refresh_expiry=False).refresh(tokens)
    assert kept.oauth2.refresh_token_expires_at == soon
    restarted = di_upstream(emulator).refresh(kept)
    expires = restarted.oauth2.refresh_token_expires_at
    assert expires is not None
    assert expires > soon + timedelta(days=20)
