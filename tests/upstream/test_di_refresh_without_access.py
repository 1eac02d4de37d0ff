"""A refresh Garmin answered 200 rotates the refresh token: the old one is dead at Garmin from
then on. When that answer's access token was missing (or not a text), the DI adapter raised
GarminUnavailable and threw the new refresh token away with it: the session's next refresh
presented the dead token, met invalid_grant, and the account was lost. A rotation Garmin made
must never be lost (docs/RELIABILITY.md; README, "What each Garmin answer leads to").

Now the adapter returns the new refresh token with the old access token, marked expired (the
refresher stores it and hands that access token to nobody: tests/refresh/
test_rotation_without_access_token.py). A ticket exchange has no refresh token of ours to
lose: there, an answer without an access token stays GARMIN_UNAVAILABLE."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.policies import IOS_SERVICE_URL
from garmin_emulator import EmulatedUser, GarminEmulator

from .conftest import PASSWORD, expired_everywhere
from .di_http import ticket_for
from .di_provider import di_upstream, issued_tokens

pytestmark = pytest.mark.timeout(60)

EMAIL = "rotating@example.com"
UNREADABLE = [{"access_token": None}, {"access_token": 12345}, {"access_token": ""}]


@pytest.mark.parametrize("odd", UNREADABLE, ids=["missing", "a-number", "empty"])
def test_a_rotation_whose_access_token_is_unreadable_keeps_the_new_refresh_token(
    emulator: GarminEmulator, odd: dict[str, object]
) -> None:
    emulator.add_user(EMAIL, "pw-rotating-1")
    tokens = issued_tokens(emulator, EMAIL)
    upstream = di_upstream(emulator)
    emulator.di.answer_overrides = dict(odd)
    try:
        fresh = upstream.refresh(tokens)
    finally:
        emulator.di.answer_overrides = {}

    assert emulator.di_refresh_count(EMAIL) == 1  # Garmin rotated: the old token is dead
    assert emulator.live_refresh_tokens(EMAIL) == [fresh.oauth2.refresh_token], (
        "Garmin rotated the refresh token but the adapter dropped the new one"
    )
    # The old access token, marked expired: the session's next use refreshes again.
    assert fresh.oauth2.access_token == tokens.oauth2.access_token
    assert fresh.oauth2.expires_at <= datetime.now(UTC)
    assert fresh.di_client_id == tokens.di_client_id
    assert fresh.oauth2.refresh_token_expires_at is not None

    again = upstream.refresh(fresh)  # with the refresh token kept
    assert emulator.live_refresh_tokens(EMAIL) == [again.oauth2.refresh_token]
    assert emulator.refresh_token_reuses(EMAIL) == 0


def test_validate_with_refresh_keeps_the_rotation_instead_of_judging_the_old_token(
    emulator: GarminEmulator,
) -> None:
    """validate(allow_refresh=True) refreshes an expired token: it returns the rotated pair
    for its caller to store, not a 401 to the old access token read as a dead session."""
    emulator.add_user(EMAIL, "pw-rotating-1")
    tokens = expired_everywhere(emulator, issued_tokens(emulator, EMAIL), EMAIL)
    emulator.di.answer_overrides = {"access_token": None}
    try:
        current = di_upstream(emulator).validate(tokens, allow_refresh=True)
    finally:
        emulator.di.answer_overrides = {}
    assert emulator.live_refresh_tokens(EMAIL) == [current.oauth2.refresh_token]


def test_a_ticket_exchange_without_an_access_token_stays_unavailable(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    ticket = ticket_for(emulator, user.email, PASSWORD)
    emulator.di.answer_overrides = {"access_token": None}
    try:
        with pytest.raises(GarminUnavailable, match="unreadable"):
            di_upstream(emulator).exchange_service_ticket(ticket, IOS_SERVICE_URL)
    finally:
        emulator.di.answer_overrides = {}
