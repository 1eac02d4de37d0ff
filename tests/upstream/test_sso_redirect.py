"""An SSO POST is never followed to another place: a redirect that keeps its method (307, 308)
would send the email and password, or the MFA code, to wherever its Location points. The
impersonating path never followed one; the plain-requests path (GARMIN_AUTH_DI_PLAIN_HTTP)
followed it. A redirect is one more answer the sign-in does not expect, judged as such.

Two real HTTP servers: the "Garmin" every request is routed to answers 307 to the other,
which records what reaches it.
"""

from __future__ import annotations

import pytest

from auth_service.upstream.di.sso_http import SsoHttp
from garmin_client.settings import UpstreamSettings
from tests.fixtures.http_servers import RecordingServer

pytestmark = pytest.mark.timeout(30)

SSO_LOGIN = "https://sso.garmin.com/mobile/api/login"


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("plain_http", [True, False])
def test_a_redirected_sign_in_post_is_not_sent_on(
    elsewhere: RecordingServer, status: int, plain_http: bool
) -> None:
    garmin = RecordingServer((status, {"Location": f"{elsewhere.url}/collect"}, b""))
    try:
        http = SsoHttp(
            UpstreamSettings(
                consumer_key="unused",
                consumer_secret="unused",
                base_url=garmin.url,
                timeout_seconds=5,
                retries=0,
            ),
            impersonate="chrome",
            plain_http=plain_http,
            observer=None,
        )
        answer = http.post_json(
            SSO_LOGIN,
            {"clientId": "GCM_IOS_DARK"},
            {"username": "ann@example.com", "password": "correct horse battery"},
            {},
        )
    finally:
        garmin.close()

    assert len(garmin.bodies) == 1
    assert (answer.status, elsewhere.bodies) == (status, [])
