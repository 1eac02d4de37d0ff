"""The worker's Connect API GETs follow no redirect, with or without a proxy.

Before: with a proxy in the environment (HTTPS_PROXY) the GETs went through requests'
Session, which follows a GET's redirect (garmin_client.transport keeps the Location of GET and
HEAD redirects), so the worker's bearer token was sent on to the Location and whatever
answered there was read as Garmin's page (here: an empty activity list, which would have
ended the user's window early and moved synced_through past unread activities). Without a
proxy (the urllib3 client) the redirect was already refused. README (The sync worker,
environment): "Redirects are not followed: the API answers JSON, and a redirect counts as
Garmin unavailable."
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import replace
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from auth_service.domain.models import GarminTokens
from garmin_client.connect_api import ConnectApi
from garmin_client.errors import Unavailable
from garmin_client.settings import UpstreamSettings
from garmin_emulator import ACTIVITIES_PATH, EmulatedUser, GarminEmulator
from tests.fixtures.http_servers import QuietHandler, serving
from tests.upstream.conftest import emulator, settings, tokens, upstream, user  # noqa: F401

pytestmark = pytest.mark.timeout(30)

MOVED_PATH = "/moved/activities"


class _Redirecting(ThreadingHTTPServer):
    """Garmin's edge, as a proxy (absolute URIs) or as the base URL (paths): its first answer
    to the activity list is a 302 (the edge moving the page, say); every other GET is
    forwarded to the emulator as it is."""

    def __init__(self, garmin_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = urlsplit(garmin_url).netloc
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization)
        self.redirected = False


class _Handler(QuietHandler):
    server: _Redirecting

    def do_GET(self) -> None:
        target = urlsplit(self.path)
        self.server.seen.append((target.path, self.headers.get("Authorization")))
        if target.path == ACTIVITIES_PATH and not self.server.redirected:
            self.server.redirected = True
            self._answer(302, b"", {"Location": MOVED_PATH})
            return
        if target.path == MOVED_PATH:
            # Whatever answers at the Location: here, an empty list.
            self._answer(200, b"[]", {"Content-Type": "application/json"})
            return
        connection = http.client.HTTPConnection(self.server.upstream, timeout=5)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
            connection.request("GET", target.path + "?" + target.query, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
        finally:
            connection.close()
        skip = ("transfer-encoding", "connection", "content-length")
        self._answer(
            answer.status, body, {k: v for k, v in answer.getheaders() if k.lower() not in skip}
        )

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def redirecting(emulator: GarminEmulator) -> Iterator[_Redirecting]:  # noqa: F811
    with serving(_Redirecting(emulator.url)) as server:
        assert isinstance(server, _Redirecting)
        yield server


@pytest.mark.parametrize("proxy", [True, False], ids=["through-a-proxy", "direct"])
def test_a_redirect_is_not_followed_and_counts_as_garmin_unavailable(
    settings: UpstreamSettings,  # noqa: F811
    emulator: GarminEmulator,  # noqa: F811
    user: EmulatedUser,  # noqa: F811
    tokens: GarminTokens,  # noqa: F811
    redirecting: _Redirecting,
    monkeypatch: pytest.MonkeyPatch,
    proxy: bool,
) -> None:
    emulator.add_activities(user.email, 3)
    address = f"http://127.0.0.1:{redirecting.server_address[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    if proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY"):
            monkeypatch.setenv(name, address)
    else:
        settings = replace(settings, base_url=address)

    answer: object = None
    with ConnectApi(settings, tokens.domain) as api:
        try:
            answer = api.get_json(
                ACTIVITIES_PATH, tokens.oauth2.access_token, {"start": 0, "limit": 5}
            )
        except Unavailable as exc:
            answer = str(exc)

        followed = [auth is not None for path, auth in redirecting.seen if path == MOVED_PATH]
        assert not followed, (
            f"the redirect was followed (bearer sent on: {followed}); "
            f"the Location's answer was read as Garmin's page: {answer!r}"
        )
        assert redirecting.redirected
        assert answer == "Garmin answered HTTP 302 (Connect API)"
        # The next GET on the same client is Garmin's own answer again.
        page = api.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token, {"start": 0, "limit": 5})
        assert isinstance(page, list)
        assert len(page) == 3
