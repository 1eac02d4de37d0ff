"""The OAuth1 -> OAuth2 exchange (a POST) is not sent on to a redirect's Location either.

garth's exchange does not go through IsolatedClient's session: garth.sso.exchange builds an
OAuth1Session that only borrows our https adapter, and follows a 307/308 with the same body
(the MFA token), signed again by requests_oauthlib with the user's OAuth1 token and our
consumer. Before, whatever answered at the Location was taken as Garmin's OAuth2 token and
returned as the session. Our transport (garmin_client.transport) now drops the Location of a
redirect answering a request with a body, whatever session sent it: the refresh reads an
answer it does not expect, Garmin unavailable.

Real emulator for the MFA login; a real HTTP server answering the exchange with a 307.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.models import LoginNeedsMfa
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings
from garmin_emulator import GarminEmulator
from tests.fixtures.http_servers import RecordingServer
from tests.refresh.conftest import CONSUMER_KEY, CONSUMER_SECRET

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct horse battery staple"
FORGED_ACCESS_TOKEN = "eyJforged-by-the-redirect-target-0123456789"


@pytest.fixture
def elsewhere() -> Iterator[RecordingServer]:
    token = {
        "scope": "CONNECT_READ",
        "jti": "forged-jti",
        "token_type": "Bearer",
        "access_token": FORGED_ACCESS_TOKEN,
        "refresh_token": "eyJforged-refresh",
        "expires_in": 3600,
        "refresh_token_expires_in": 7200,
    }
    server = RecordingServer(
        (200, {"Content-Type": "application/json"}, json.dumps(token).encode())
    )
    yield server
    server.close()


def _settings(base_url: str) -> UpstreamSettings:
    return UpstreamSettings(
        consumer_key=CONSUMER_KEY,
        consumer_secret=CONSUMER_SECRET,
        base_url=base_url,
        timeout_seconds=5,
        retries=0,
    )


@pytest.mark.parametrize("status", [307, 308])
def test_a_redirected_garth_exchange_post_is_not_sent_on(
    emulator: GarminEmulator, elsewhere: RecordingServer, status: int
) -> None:
    user = emulator.add_user("redirected@example.com", PASSWORD, mfa=True, mfa_code="135790")
    at_garmin = GarthUpstream(_settings(emulator.url))
    pending = at_garmin.login(user.email, PASSWORD)
    assert isinstance(pending, LoginNeedsMfa)
    tokens = at_garmin.resume_mfa(pending.pending, "135790")
    mfa_token = tokens.oauth1_token().mfa_token
    assert mfa_token

    garmin = RecordingServer((status, {"Location": f"{elsewhere.url}/collect"}, b""))
    try:
        with pytest.raises(GarminUnavailable):
            GarthUpstream(_settings(garmin.url)).refresh(tokens)
    finally:
        garmin.close()

    assert len(garmin.requests) == 1
    oauth_token = tokens.oauth1_token().oauth_token
    sent_on = [
        (oauth_token in headers.get("Authorization", ""), mfa_token.encode() in body)
        for _method, _path, headers, body in elsewhere.requests
    ]
    # Before: re-sent to the Location, re-signed with the user's OAuth1 token, carrying the
    # MFA token in its body: [(True, True)].
    assert sent_on == [], f"the exchange reached the redirect's Location: {sent_on}"
