"""DI tokens at the emulator's Connect API, and what tests read back from its DI side: faults
on the token endpoint, the peak of requests in flight, and every secret it issued."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from garmin_emulator import (
    DI_TOKEN_PATH,
    EMBED_SERVICE_URL,
    KNOWN_DI_CLIENT_IDS,
    PROFILE_PATH,
    EmulatedUser,
    GarminEmulator,
)
from tests.fixtures.emulators import every_secret_issued

from .conftest import PASSWORD
from .di_http import APP, TIMEOUT, exchange, mobile_login, refresh, ticket_for, verify_mfa

pytestmark = pytest.mark.timeout(60)

NOT_ACTIVE = 'Bearer error="invalid_token", error_description="Token is not active"'


def profile(emulator: GarminEmulator, access_token: str) -> requests.Response:
    return requests.get(
        f"{emulator.url}{PROFILE_PATH}",
        headers={**APP, "Authorization": f"Bearer {access_token}"},
        timeout=TIMEOUT,
    )


def test_the_api_takes_a_di_token_and_records_the_app_headers(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    access = exchange(emulator, ticket_for(emulator, user.email, PASSWORD)).json()["access_token"]

    answer = profile(emulator, access)

    assert answer.status_code == 200
    assert answer.json()["userName"] == user.email
    [call] = emulator.api_calls
    assert (call.token_owner, call.token_kind, call.status) == (user.email, "di", 200)
    assert call.app_headers == APP


def test_expired_revoked_forged_and_unknown_tokens_are_not_active(
    emulator: GarminEmulator, user: EmulatedUser, other_user: EmulatedUser
) -> None:
    expiring = emulator.issue_di_tokens(user.email)["access_token"]
    revoked = emulator.issue_di_tokens(other_user.email)["access_token"]
    header, payload, signature = emulator.issue_di_tokens(user.email)["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] += 86_400
    longer = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    emulator.expire_access_tokens(user.email)
    emulator.revoke_tokens(other_user.email)

    answers = [
        profile(emulator, expiring),
        profile(emulator, revoked),
        profile(emulator, f"{header}.{longer}.{signature}"),
        profile(emulator, "eyJhbGciOiJIUzI1NiJ9.e30.unknown"),
    ]

    for answer in answers:
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == NOT_ACTIVE


def test_the_api_refuses_the_widgets_tokens_only_when_told(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    embed = emulator.issue_di_tokens(user.email, service_url=EMBED_SERVICE_URL)["access_token"]
    mobile = emulator.issue_di_tokens(user.email)["access_token"]
    assert profile(emulator, embed).status_code == 200

    emulator.di.api_refuses_embed_tokens = True

    assert profile(emulator, embed).status_code == 401
    assert profile(emulator, mobile).status_code == 200


def test_garminconnect_token_file_is_a_live_pair_for_its_client_id(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    client_id = KNOWN_DI_CLIENT_IDS[3]
    tokens = emulator.garminconnect_tokens(user.email, client_id=client_id)

    assert set(tokens) == {"di_token", "di_refresh_token", "di_client_id"}
    assert profile(emulator, tokens["di_token"]).status_code == 200
    assert refresh(emulator, tokens["di_refresh_token"], client_id=client_id).status_code == 200
    assert emulator.ticket_exchange_count(user.email) == 0


def test_faults_on_the_token_endpoint_leave_the_refresh_token_alive(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    token = emulator.issue_di_tokens(user.email)["refresh_token"]
    emulator.fail_next(DI_TOKEN_PATH, 429, retry_after=30)
    emulator.fail_next(DI_TOKEN_PATH, 503, body="<html>down</html>")
    emulator.fail_next(DI_TOKEN_PATH, "hang", delay=1.0)

    limited = refresh(emulator, token)
    down = refresh(emulator, token)
    with pytest.raises(requests.Timeout):
        refresh(emulator, token, timeout=0.3)
    after = refresh(emulator, token)

    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "30")
    assert down.status_code == 503
    assert after.status_code == 200
    assert emulator.di_refresh_count(user.email) == 1
    assert emulator.refresh_token_reuses(user.email) == 0


def test_peak_in_flight_counts_concurrent_token_requests(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    tokens = [emulator.issue_di_tokens(user.email)["refresh_token"] for _ in range(6)]
    for token in tokens[:2]:
        assert refresh(emulator, token).status_code == 200
    assert emulator.peak_in_flight() == 1
    # Slow answers, so the six overlap however the threads are scheduled.
    emulator.fail_next(DI_TOKEN_PATH, None, count=4, delay=1.0)

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda token: refresh(emulator, token), tokens[2:]))

    assert [answer.status_code for answer in answers] == [200] * 4
    assert emulator.peak_in_flight(DI_TOKEN_PATH) == 4
    emulator.reset_records()
    assert emulator.peak_in_flight() == 0


def test_every_secret_the_di_sign_in_issues_reaches_on_secret(
    emulator: GarminEmulator, mfa_user: EmulatedUser
) -> None:
    http = requests.Session()
    mobile_login(emulator, mfa_user.email, PASSWORD, http=http)
    ticket = verify_mfa(emulator, http, mfa_user.mfa_code).json()["serviceTicketId"]
    first = exchange(emulator, ticket).json()
    second = refresh(emulator, first["refresh_token"]).json()
    imported = emulator.garminconnect_tokens(mfa_user.email)

    assert len(http.cookies) == 4  # GARMIN-SSO=1 is the one cookie that carries nothing
    issued = {value for value in http.cookies.values() if value != "1"}
    issued |= {ticket, first["refresh_token"], second["refresh_token"]}
    issued |= {imported["di_token"], imported["di_refresh_token"]}
    for access in (first["access_token"], second["access_token"], imported["di_token"]):
        issued |= {access, access.rsplit(".", 1)[1]}
    assert issued <= every_secret_issued()
