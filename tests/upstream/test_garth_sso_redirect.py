"""The garth login flow (GARMIN_AUTH_LOGIN_FLOW=garth) sends no POST on to a redirect's
Location either (tests/upstream/test_sso_redirect.py: the DI flow).

garth's Client.request leaves requests' default allow_redirects=True: before, a 307 or 308
from /mobile/api/login re-POSTed the JSON body, email and password, to wherever Location
pointed. IsolatedClient's session follows no redirect of a POST; the answer is one the sign-in
does not expect: Garmin unavailable. Two real HTTP servers.
"""

from __future__ import annotations

import pytest

from auth_service.domain.errors import GarminUnavailable
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings
from tests.fixtures.http_servers import RecordingServer

pytestmark = pytest.mark.timeout(30)

PASSWORD = "correct horse battery"


@pytest.mark.parametrize("status", [307, 308])
def test_a_redirected_garth_sign_in_post_is_not_sent_on(
    elsewhere: RecordingServer, status: int
) -> None:
    garmin = RecordingServer((status, {"Location": f"{elsewhere.url}/collect"}, b""))
    try:
        upstream = GarthUpstream(
            UpstreamSettings(
                consumer_key="unused",
                consumer_secret="unused",
                base_url=garmin.url,
                timeout_seconds=5,
                retries=0,
            )
        )
        with pytest.raises(GarminUnavailable):
            upstream.login("ann@example.com", PASSWORD)
    finally:
        garmin.close()

    assert len(garmin.bodies) == 1
    leaked = [body for body in elsewhere.bodies if PASSWORD.encode() in body]
    assert leaked == [], f"the password reached the redirect's Location: {leaked}"
