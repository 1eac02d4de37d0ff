"""A redirect adds no netrc credentials either (docs/SECURITY.md: every requests session we
build reads no netrc file).

requests' Session.rebuild_auth, run for every redirect a session follows, applies the netrc
entry of the redirect's host (or the file's `default` entry) whatever the session's own auth
is, and garth's Client.request follows the redirects of its GETs. Before: when Garmin answered
the garth provider's profile GET (GetStatus with validate) with a 302, as Garmin's sites do to
a sign-in page, the operator's netrc password went, as HTTP Basic, to wherever Location
pointed. upstream_session's sessions now rebuild a redirect's auth without the netrc (and still
drop our Authorization when the redirect leaves the host).

Real HTTP servers: one answering the profile GET with a 302, one at its Location.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from auth_service.domain.errors import UpstreamError
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings
from garmin_client.tokens import GarminTokens, OAuth1Token, OAuth2Token
from tests.fixtures.http_servers import QuietHandler, RecordingServer, serving

pytestmark = pytest.mark.timeout(60)

NETRC_PASSWORD = "netrc-password-of-the-operator"
ACCESS_TOKEN = "eyJaccess-token-of-the-user"


@pytest.fixture
def elsewhere() -> Iterator[RecordingServer]:
    server = RecordingServer((405, {}, b""))
    yield server
    server.close()


@contextmanager
def redirecting_to(location: str) -> Iterator[str]:
    """A stand-in for Garmin answering every GET with a 302 to `location`; yields its URL."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def _tokens() -> GarminTokens:
    now = datetime.now(UTC)
    return GarminTokens(
        oauth1=OAuth1Token(oauth_token="o1", oauth_token_secret="s1"),
        oauth2=OAuth2Token(
            scope="CONNECT_READ",
            jti="j",
            token_type="Bearer",
            access_token=ACCESS_TOKEN,
            refresh_token="eyJrefresh",
            expires_at=now + timedelta(hours=5),
            refresh_token_expires_at=now + timedelta(days=30),
        ),
        domain="garmin.com",
    )


def test_a_redirected_profile_get_carries_no_netrc_credentials(
    elsewhere: RecordingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"default login ops password {NETRC_PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    with redirecting_to(f"{elsewhere.url}/signin") as garmin_url:
        upstream = GarthUpstream(
            UpstreamSettings(
                consumer_key="key",
                consumer_secret="secret",
                base_url=garmin_url,
                timeout_seconds=5,
                retries=0,
            )
        )
        with pytest.raises(UpstreamError):
            upstream.validate(_tokens(), allow_refresh=False)

    assert [(method, path) for method, path, _h, _b in elsewhere.requests] == [("GET", "/signin")]
    sent = elsewhere.requests[0][2]
    # Before: "Basic b3BzOm5ldHJj...", the netrc's login and password.
    assert "Authorization" not in sent, sent.get("Authorization")
    assert NETRC_PASSWORD not in str(sent)
    assert base64.b64encode(f"ops:{NETRC_PASSWORD}".encode()).decode() not in str(sent)
    assert ACCESS_TOKEN not in str(sent)  # nor the bearer token: the redirect left the host
