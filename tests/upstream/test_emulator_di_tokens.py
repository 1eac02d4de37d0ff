"""The emulator's DI token endpoint, spoken to directly over HTTP: the service-ticket
exchange, rotating refresh, Basic client auth and the uncertain points as options."""

from __future__ import annotations

import time

import pytest
import requests

from garmin_emulator import (
    ANDROID_SERVICE_URL,
    DI_TOKEN_PATH,
    INVALID_TICKET,
    KNOWN_DI_CLIENT_IDS,
    REFRESH_TOKEN_GRANT,
    SERVICE_TICKET_GRANT,
    EmulatedUser,
    GarminEmulator,
)

from .conftest import PASSWORD
from .di_http import APP, CLIENT_ID, basic, exchange, jwt_payload, refresh, ticket_for, token_call

pytestmark = pytest.mark.timeout(30)


def signed_in(emulator: GarminEmulator, user: EmulatedUser) -> dict[str, object]:
    answer = exchange(emulator, ticket_for(emulator, user.email, PASSWORD))
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def test_ticket_exchange_answers_garmins_token_shape_with_a_jwt(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    before = int(time.time())

    body = signed_in(emulator, user)

    assert set(body) == {
        "access_token",
        "token_type",
        "refresh_token",
        "expires_in",
        "refresh_token_expires_in",
        "scope",
        "jti",
    }
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == emulator.di.access_token_expires_in
    assert body["refresh_token_expires_in"] == pytest.approx(
        emulator.di.refresh_token_expires_in, abs=2
    )
    assert "CONNECT_READ" in str(body["scope"]).split()
    payload = jwt_payload(str(body["access_token"]))
    assert payload["client_id"] == CLIENT_ID
    assert payload["iss"] == "https://diauth.garmin.com"
    assert payload["jti"] == body["jti"]
    assert payload["garminGuid"] == f"guid-{user.profile_id}"
    assert before <= payload["iat"] <= int(time.time())
    assert payload["exp"] - payload["iat"] == body["expires_in"]
    assert emulator.ticket_exchange_count(user.email) == 1
    [seen] = emulator.token_requests
    assert (seen.host, seen.grant_type, seen.client_id) == (
        "diauth.garmin.com",
        SERVICE_TICKET_GRANT,
        CLIENT_ID,
    )
    assert (seen.email, seen.status, seen.outcome) == (user.email, 200, "issued")
    assert seen.app_headers == APP


def test_a_ticket_is_single_use_and_bound_to_its_service_url(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    ticket = ticket_for(emulator, user.email, PASSWORD)
    wrong_url = exchange(emulator, ticket, service_url=ANDROID_SERVICE_URL)
    emulator.di.wrong_service_url_burns_ticket = False
    spared = ticket_for(emulator, user.email, PASSWORD)
    spared_wrong = exchange(emulator, spared, service_url=ANDROID_SERVICE_URL)

    burnt_then_right = exchange(emulator, ticket)
    spared_then_right = exchange(emulator, spared)
    reused = exchange(emulator, spared)

    for refused in (wrong_url, spared_wrong, burnt_then_right, reused):
        assert refused.status_code == 400
        assert INVALID_TICKET in refused.text
    assert spared_then_right.status_code == 200
    assert emulator.ticket_exchange_count(user.email) == 1
    assert exchange(emulator, "ST-0000001-abcdefghijklmnopqrst-sso").status_code == 400


def test_an_expired_ticket_is_refused(emulator: GarminEmulator, user: EmulatedUser) -> None:
    emulator.di.ticket_ttl_seconds = 0.2
    ticket = ticket_for(emulator, user.email, PASSWORD)

    time.sleep(0.3)

    answer = exchange(emulator, ticket)
    assert answer.status_code == 400
    assert INVALID_TICKET in answer.text


@pytest.mark.parametrize("burns", [False, True])
def test_a_refused_client_id_burns_the_ticket_only_when_told(
    emulator: GarminEmulator, user: EmulatedUser, burns: bool
) -> None:
    emulator.di.refused_client_burns_ticket = burns
    emulator.di.accepted_client_ids = KNOWN_DI_CLIENT_IDS[1:]
    ticket = ticket_for(emulator, user.email, PASSWORD)

    refused = exchange(emulator, ticket, client_id=KNOWN_DI_CLIENT_IDS[0])
    next_id = exchange(emulator, ticket, client_id=KNOWN_DI_CLIENT_IDS[1])

    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    assert next_id.status_code == (400 if burns else 200)


@pytest.mark.parametrize(
    "authorization",
    [basic("SOMEONE_ELSES_CLIENT"), basic(CLIENT_ID, "a-secret"), "Bearer x", "Basic %%%"],
)
def test_basic_auth_must_name_the_forms_client_id_with_an_empty_secret(
    emulator: GarminEmulator, user: EmulatedUser, authorization: str
) -> None:
    ticket = ticket_for(emulator, user.email, PASSWORD)
    form = {
        "client_id": CLIENT_ID,
        "service_ticket": ticket,
        "grant_type": SERVICE_TICKET_GRANT,
        "service_url": "https://mobile.integration.garmin.com/gcm/ios",
    }

    answer = token_call(emulator, form, authorization=authorization)

    assert answer.status_code == 401
    assert emulator.token_requests[-1].outcome == "invalid_client"
    assert exchange(emulator, ticket).status_code == 200  # the ticket was not used up


def test_refresh_rotates_and_a_reused_token_is_invalid_grant_and_counted(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    first = signed_in(emulator, user)

    second = refresh(emulator, str(first["refresh_token"]))
    reused = refresh(emulator, str(first["refresh_token"]))
    third = refresh(emulator, second.json()["refresh_token"])

    assert second.status_code == 200
    body = second.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["access_token"] != first["access_token"]
    assert "refresh_token_expires_in" not in body  # as Garmin usually answers
    assert jwt_payload(body["access_token"])["client_id"] == CLIENT_ID
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert reused.json()["error_description"].startswith("Invalid refresh token: ")
    assert third.status_code == 200
    assert emulator.di_refresh_count(user.email) == 2
    assert emulator.refresh_token_reuses(user.email) == 1
    assert emulator.live_refresh_tokens(user.email) == [third.json()["refresh_token"]]
    hosts = [(r.host, r.grant_type, r.outcome) for r in emulator.token_requests[1:]]
    assert hosts == [
        ("diauth.garmin.com", REFRESH_TOKEN_GRANT, "issued"),
        ("diauth.garmin.com", REFRESH_TOKEN_GRANT, "invalid_grant"),
        ("diauth.garmin.com", REFRESH_TOKEN_GRANT, "issued"),
    ]


@pytest.mark.parametrize("kills", [False, True])
def test_reusing_an_old_token_kills_the_newest_only_when_told(
    emulator: GarminEmulator, user: EmulatedUser, kills: bool
) -> None:
    emulator.di.reuse_kills_newest = kills
    first = signed_in(emulator, user)
    newest = refresh(emulator, str(first["refresh_token"])).json()["refresh_token"]

    refresh(emulator, str(first["refresh_token"]))

    assert refresh(emulator, newest).status_code == (400 if kills else 200)


def test_foreign_revoked_and_expired_refresh_tokens_are_invalid_grant_not_reuses(
    emulator: GarminEmulator, user: EmulatedUser, other_user: EmulatedUser
) -> None:
    mine = str(signed_in(emulator, user)["refresh_token"])
    theirs = emulator.issue_di_tokens(other_user.email)["refresh_token"]

    foreign = refresh(emulator, mine, client_id=KNOWN_DI_CLIENT_IDS[1])
    unknown = refresh(emulator, "not-a-refresh-token")
    emulator.revoke_tokens(user.email)
    revoked = refresh(emulator, mine)
    emulator.expire_refresh_tokens(other_user.email)
    expired = refresh(emulator, theirs)

    for answer in (foreign, unknown, revoked, expired):
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_grant"
    assert emulator.refresh_token_reuses(user.email) == 0
    assert emulator.refresh_token_reuses(other_user.email) == 0
    assert emulator.live_refresh_tokens(user.email) == []


@pytest.mark.parametrize("restarts", [True, False])
def test_rotation_restarts_the_refresh_lifetime_only_when_told(
    emulator: GarminEmulator, user: EmulatedUser, restarts: bool
) -> None:
    emulator.di.omit_refresh_expiry_on_refresh = False
    emulator.di.rotation_restarts_refresh_expiry = restarts
    token = emulator.issue_di_tokens(user.email)["refresh_token"]
    emulator.expire_refresh_tokens(user.email, after=100)

    answer = refresh(emulator, token).json()

    expected = emulator.di.refresh_token_expires_in if restarts else 100
    assert answer["refresh_token_expires_in"] == pytest.approx(expected, abs=2)


def test_malformed_token_requests_are_oauth_errors(emulator: GarminEmulator) -> None:
    unsupported = token_call(emulator, {"client_id": CLIENT_ID, "grant_type": "password"})
    as_json = requests.post(
        f"{emulator.url}{DI_TOKEN_PATH}",
        json={"client_id": CLIENT_ID, "grant_type": REFRESH_TOKEN_GRANT},
        headers={"Authorization": basic(CLIENT_ID)},
        timeout=5,
    )

    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"
    assert as_json.status_code == 400
    assert as_json.json()["error"] == "invalid_request"
    assert [r.outcome for r in emulator.token_requests] == ["invalid_request"] * 2
