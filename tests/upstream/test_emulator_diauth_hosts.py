"""Which diauth issued a DI pair, as the emulator plays it: garmin.cn accounts get their tokens
from diauth.garmin.cn and refresh only there, and every access token names its issuing host as
``iss``. A refresh token at the other host is as foreign as a made-up one: 400 invalid_grant,
nothing rotated, killed or counted. The emulator knows the host a request was meant for by its
X-Forwarded-Host, as the service's transport sends it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import requests

from auth_service.domain.errors import GarminSessionRejected
from auth_service.domain.jwt_payload import di_issuer_domain
from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from garmin_emulator import DI_TOKENS_PATH, REFRESH_TOKEN_GRANT, EmulatedUser, GarminEmulator

from .conftest import PASSWORD
from .di_http import exchange, jwt_payload, refresh, ticket_for
from .di_provider import di_upstream, issued_tokens

pytestmark = pytest.mark.timeout(30)

COM, CN = "diauth.garmin.com", "diauth.garmin.cn"


def _refused_as_foreign(answer: requests.Response) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_grant"
    assert answer.json()["error_description"].startswith("Invalid refresh token: ")


def _bulk(emulator: GarminEmulator, body: object) -> requests.Response:
    return requests.post(f"{emulator.url}{DI_TOKENS_PATH}", json=body, timeout=5)


@pytest.mark.parametrize(("issued_at", "presented_at"), [(COM, CN), (CN, COM)])
def test_a_refresh_token_is_invalid_grant_at_the_other_diauth_and_stays_live(
    emulator: GarminEmulator, user: EmulatedUser, issued_at: str, presented_at: str
) -> None:
    answer = exchange(emulator, ticket_for(emulator, user.email, PASSWORD), host=issued_at)
    assert answer.status_code == 200, answer.text
    token = answer.json()["refresh_token"]

    _refused_as_foreign(refresh(emulator, token, host=presented_at))

    assert emulator.live_refresh_tokens(user.email) == [token]
    assert emulator.di_refresh_count(user.email) == 0
    assert emulator.refresh_token_reuses(user.email) == 0
    # The other host did not know the token, so it could not say whose it was.
    seen = emulator.token_requests[-1]
    assert (seen.host, seen.grant_type, seen.email, seen.outcome) == (
        presented_at,
        REFRESH_TOKEN_GRANT,
        None,
        "invalid_grant",
    )
    assert refresh(emulator, token, host=issued_at).status_code == 200


def test_a_rotated_out_token_at_the_other_diauth_kills_nothing(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    """Even where a reused token kills the newest one, the other host's refusal is no reuse."""
    emulator.di.reuse_kills_newest = True
    first = emulator.issue_di_tokens(user.email)["refresh_token"]
    newest = refresh(emulator, first).json()["refresh_token"]

    _refused_as_foreign(refresh(emulator, first, host=CN))

    assert emulator.refresh_token_reuses(user.email) == 0
    assert emulator.live_refresh_tokens(user.email) == [newest]


def test_tokens_issued_at_diauth_garmin_cn_name_it_as_their_issuer(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    signed_in = exchange(emulator, ticket_for(emulator, user.email, PASSWORD), host=CN).json()
    rotated = refresh(emulator, signed_in["refresh_token"], host=CN)
    direct = emulator.issue_di_tokens(user.email, domain="garmin.cn")
    garmin_com = emulator.issue_di_tokens(user.email)

    assert rotated.status_code == 200, rotated.text
    for answer in (signed_in, rotated.json(), direct):
        assert jwt_payload(answer["access_token"])["iss"] == "https://diauth.garmin.cn"
    assert jwt_payload(garmin_com["access_token"])["iss"] == "https://diauth.garmin.com"
    assert [(r.host, r.outcome) for r in emulator.token_requests] == [
        (CN, "issued"),
        (CN, "issued"),
    ]


def test_a_garmin_cn_token_file_reads_as_a_garmin_cn_session(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    """python-garminconnect's file names no domain: the service's reader takes the JWT's."""
    file = emulator.garminconnect_tokens(user.email, domain="garmin.cn")
    assert tokens_from_garminconnect(json.dumps(file)).domain == "garmin.cn"
    bulk = _bulk(emulator, {"emails": [user.email], "domain": "garmin.cn"})
    assert bulk.status_code == 200, bulk.text
    [bulk_file] = bulk.json()["tokens"]
    assert di_issuer_domain(bulk_file["di_token"]) == "garmin.cn"
    refused = _bulk(emulator, {"emails": [user.email], "domain": "garmin.example"})
    assert refused.status_code == 400
    assert "domain" in refused.json()["message"]
    with pytest.raises(ValueError, match="domain"):
        emulator.issue_di_tokens(user.email, domain="garmin.example")


def test_the_di_provider_refreshes_a_session_at_its_own_domains_diauth(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    """The provider routes a refresh by the session's domain: a garmin.cn pair rotates at
    diauth.garmin.cn, and the same pair stored as garmin.com is refused at diauth.garmin.com
    (the session rejected, the refresh token still live where it belongs)."""
    chinese = issued_tokens(emulator, user.email, domain="garmin.cn")
    upstream = di_upstream(emulator)

    with pytest.raises(GarminSessionRejected):
        upstream.refresh(dataclasses.replace(chinese, domain="garmin.com"))
    assert emulator.live_refresh_tokens(user.email) == [chinese.oauth2.refresh_token]

    fresh = upstream.refresh(chinese)

    assert fresh.domain == "garmin.cn"
    assert di_issuer_domain(fresh.oauth2.access_token) == "garmin.cn"
    assert [(r.host, r.outcome) for r in emulator.token_requests] == [
        (COM, "invalid_grant"),
        (CN, "issued"),
    ]
    assert emulator.live_refresh_tokens(user.email) == [fresh.oauth2.refresh_token]
