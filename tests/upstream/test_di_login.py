"""The DI provider's sign-in against the emulator over HTTP: the mobile JSON login (through
curl_cffi, and plain requests where configured), MFA finished by another provider instance
(another replica), refusals, Garmin's blocks, and the ticket exchange's client ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from auth_service.domain.errors import (
    GarminCredentialsRejected,
    GarminRateLimited,
    GarminUnavailable,
    MfaCodeRejected,
    ServiceTicketRejected,
)
from auth_service.domain.models import LoginNeedsMfa, SessionKind
from auth_service.domain.policies import ANDROID_SERVICE_URL, IOS_SERVICE_URL, RefusedClientId
from garmin_emulator import (
    BLOCK_CAPTCHA,
    BLOCK_CLOUDFLARE,
    BLOCK_RATE_LIMITED,
    DI_TOKEN_PATH,
    KNOWN_DI_CLIENT_IDS,
    LOGIN_PATH,
    EmulatedUser,
    GarminEmulator,
)

from .conftest import PASSWORD
from .di_http import ticket_for
from .di_provider import di_login, di_upstream

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("plain_http", [False, True], ids=["curl_cffi", "requests"])
def test_login_without_mfa_gives_a_di_session(
    emulator: GarminEmulator, user: EmulatedUser, plain_http: bool
) -> None:
    tokens = di_login(di_upstream(emulator, plain_http=plain_http), user)

    assert tokens.kind is SessionKind.DI_OAUTH2
    assert tokens.oauth1 is None
    assert tokens.di_client_id == KNOWN_DI_CLIENT_IDS[0]
    assert tokens.domain == "garmin.com"
    assert tokens.refresh_token_lifetime_seconds is not None
    expires = tokens.oauth2.refresh_token_expires_at
    assert expires is not None
    assert expires - datetime.now(UTC) > timedelta(days=29)
    assert tokens.oauth2.expires_at > datetime.now(UTC) + timedelta(hours=1)
    assert emulator.ticket_exchange_count(user.email) == 1
    # The mobile login needs no sign-in page first.
    assert emulator.request_count("/mobile/sso") == 0
    assert emulator.request_count(LOGIN_PATH) == 1


def test_mfa_login_finishes_on_another_instance(
    emulator: GarminEmulator, mfa_user: EmulatedUser
) -> None:
    result = di_upstream(emulator).login(mfa_user.email, PASSWORD)
    assert isinstance(result, LoginNeedsMfa)
    pending = result.pending
    assert pending.flow is SessionKind.DI_OAUTH2
    assert pending.mfa_method == mfa_user.mfa_method
    assert {c["name"] for c in pending.cookies} >= {"SESSION", "CASTGC"}
    assert "redacted" in repr(pending)

    other = di_upstream(emulator)
    with pytest.raises(MfaCodeRejected):
        other.resume_mfa(pending, "000000")
    tokens = other.resume_mfa(pending, mfa_user.mfa_code)
    assert tokens.kind is SessionKind.DI_OAUTH2
    assert emulator.ticket_exchange_count(mfa_user.email) == 1


def test_wrong_password_is_a_credentials_rejection(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    with pytest.raises(GarminCredentialsRejected):
        di_upstream(emulator).login(user.email, "not the password")
    assert emulator.request_count(DI_TOKEN_PATH) == 0


def test_a_429_is_rate_limited_with_garmins_retry_after(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    emulator.block_logins(BLOCK_RATE_LIMITED, retry_after=900)
    with pytest.raises(GarminRateLimited) as limited:
        di_upstream(emulator).login(user.email, PASSWORD)
    assert limited.value.retry_after_seconds == 900


@pytest.mark.parametrize("kind", [BLOCK_CLOUDFLARE, BLOCK_CAPTCHA])
def test_cloudflare_and_captcha_blocks_are_unavailable_not_refusals(
    emulator: GarminEmulator, user: EmulatedUser, kind: str
) -> None:
    emulator.block_logins(kind)
    with pytest.raises(GarminUnavailable):
        di_upstream(emulator).login(user.email, PASSWORD)


def test_a_5xx_on_login_is_unavailable(emulator: GarminEmulator, user: EmulatedUser) -> None:
    emulator.fail_next(LOGIN_PATH, 503)
    with pytest.raises(GarminUnavailable):
        di_upstream(emulator).login(user.email, PASSWORD)


def test_a_ticket_exchanges_once_and_only_for_its_service_url(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    upstream = di_upstream(emulator)
    ticket = ticket_for(emulator, user.email, PASSWORD, service=ANDROID_SERVICE_URL)
    tokens = upstream.exchange_service_ticket(ticket, ANDROID_SERVICE_URL)
    assert tokens.kind is SessionKind.DI_OAUTH2
    with pytest.raises(ServiceTicketRejected):
        upstream.exchange_service_ticket(ticket, ANDROID_SERVICE_URL)

    other = ticket_for(emulator, user.email, PASSWORD)  # issued for the iOS URL
    with pytest.raises(ServiceTicketRejected):
        upstream.exchange_service_ticket(other, ANDROID_SERVICE_URL)


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, "invalid_grant"), (400, "invalid_request"), (401, "invalid_request"), (403, "")],
)
def test_a_ticket_refusal_is_known_by_its_phrase_whatever_its_code(
    emulator: GarminEmulator, user: EmulatedUser, status: int, error: str
) -> None:
    """The facts file records the refusal's phrase, not its status or error code. Before,
    only 400 invalid_grant was a refusal; the others answered "Garmin is down, try later"
    for a ticket no retry can use."""
    emulator.di.invalid_ticket_status, emulator.di.invalid_ticket_error = status, error
    upstream = di_upstream(emulator)
    ticket = ticket_for(emulator, user.email, PASSWORD)
    upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL)

    with pytest.raises(ServiceTicketRejected):
        upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL)


@pytest.mark.parametrize("on_refused", [RefusedClientId.STOP, RefusedClientId.NEXT])
def test_a_ticket_refused_401_invalid_client_with_the_phrase_is_a_refused_ticket(
    emulator: GarminEmulator, user: EmulatedUser, on_refused: RefusedClientId
) -> None:
    """The phrase decides before the error code: before, 401 invalid_client read as our
    client id refused (GARMIN_UNAVAILABLE, an operator alarm), and with `next` the dead
    ticket was presented with every client id."""
    emulator.di.invalid_ticket_status, emulator.di.invalid_ticket_error = 401, "invalid_client"
    upstream = di_upstream(emulator, on_refused_client_id=on_refused)
    ticket = ticket_for(emulator, user.email, PASSWORD)
    upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL)  # used once: now dead
    before = len(emulator.token_requests)

    with pytest.raises(ServiceTicketRejected):
        upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL)
    assert len(emulator.token_requests) - before == 1


@pytest.mark.parametrize("status", [429, 500, 503])
def test_the_refusal_phrase_in_a_429_or_5xx_is_no_verdict(
    emulator: GarminEmulator, user: EmulatedUser, status: int
) -> None:
    emulator.di.invalid_ticket_status = status
    upstream = di_upstream(emulator)
    ticket = ticket_for(emulator, user.email, PASSWORD)
    upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL)

    with pytest.raises((GarminUnavailable, GarminRateLimited)):
        upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL)


def test_a_refused_client_id_stops_by_default(emulator: GarminEmulator, user: EmulatedUser) -> None:
    emulator.di.accepted_client_ids = KNOWN_DI_CLIENT_IDS[1:]
    ticket = ticket_for(emulator, user.email, PASSWORD)
    with pytest.raises(GarminUnavailable, match="GARMIN_AUTH_DI_CLIENT_IDS"):
        di_upstream(emulator).exchange_service_ticket(ticket, IOS_SERVICE_URL)
    assert [r.client_id for r in emulator.token_requests] == [KNOWN_DI_CLIENT_IDS[0]]


def test_a_refused_client_id_tries_the_next_when_configured(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    emulator.di.accepted_client_ids = KNOWN_DI_CLIENT_IDS[1:]
    upstream = di_upstream(emulator, on_refused_client_id=RefusedClientId.NEXT)
    tokens = upstream.exchange_service_ticket(
        ticket_for(emulator, user.email, PASSWORD), IOS_SERVICE_URL
    )
    assert tokens.di_client_id == KNOWN_DI_CLIENT_IDS[1]
    assert [r.client_id for r in emulator.token_requests] == list(KNOWN_DI_CLIENT_IDS[:2])


def test_a_ticket_spent_by_our_refused_client_id_is_not_the_users_fault(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    """Where a refused client id burns the ticket (uncertain in the facts file), `next` met
    the spent ticket with the second id and answered SERVICE_TICKET_REJECTED: the user was
    told to fetch a new ticket, which met the same refusal every time. Our client id is at
    fault: GARMIN_UNAVAILABLE, as when it stops at the first id."""
    emulator.di.accepted_client_ids = KNOWN_DI_CLIENT_IDS[1:]
    emulator.di.refused_client_burns_ticket = True
    upstream = di_upstream(emulator, on_refused_client_id=RefusedClientId.NEXT)
    with pytest.raises(GarminUnavailable, match="GARMIN_AUTH_DI_CLIENT_IDS"):
        upstream.exchange_service_ticket(
            ticket_for(emulator, user.email, PASSWORD), IOS_SERVICE_URL
        )
    assert [r.client_id for r in emulator.token_requests] == list(KNOWN_DI_CLIENT_IDS[:2])


def test_a_bad_ticket_is_still_the_users_with_next(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    # The first id is accepted and refuses the ticket itself: that verdict is the ticket's.
    upstream = di_upstream(emulator, on_refused_client_id=RefusedClientId.NEXT)
    ticket = ticket_for(emulator, user.email, PASSWORD)
    upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL)
    with pytest.raises(ServiceTicketRejected):
        upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL)
