"""ConnectApi behind a proxy the environment names: requests' Session sends through it (the
urllib3 client, garmin_client.api_http, is only used when the environment names none)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from auth_service.domain.models import GarminTokens
from garmin_client.connect_api import ConnectApi
from garmin_client.settings import UpstreamSettings
from garmin_emulator import ACTIVITIES_PATH, EmulatedUser, GarminEmulator
from tests.fixtures.http_servers import QuietHandler, serving

pytestmark = pytest.mark.timeout(30)


class _ForwardingProxy(ThreadingHTTPServer):
    """A plain HTTP proxy: forwards each absolute-URI GET and remembers its target."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.forwarded: list[str] = []


class _Forward(QuietHandler):
    server: _ForwardingProxy

    def do_GET(self) -> None:
        target = urlsplit(self.path)
        self.server.forwarded.append(self.path)
        upstream = http.client.HTTPConnection(target.netloc, timeout=5)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
            upstream.request("GET", target.path + "?" + target.query, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def proxy() -> Iterator[_ForwardingProxy]:
    with serving(_ForwardingProxy()) as server:
        assert isinstance(server, _ForwardingProxy)
        yield server


def test_with_a_proxy_in_the_environment_every_get_goes_through_it(
    settings: UpstreamSettings,
    emulator: GarminEmulator,
    user: EmulatedUser,
    tokens: GarminTokens,
    proxy: _ForwardingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator.add_activities(user.email, 3)
    address = f"http://127.0.0.1:{proxy.server_address[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, address)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    with ConnectApi(settings, tokens.domain) as api:
        page = api.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token, {"start": 0, "limit": 5})

    assert len(page) == 3
    assert proxy.forwarded == [f"{emulator.url}{ACTIVITIES_PATH}?start=0&limit=5"]
    assert emulator.api_calls[-1].authorization == f"Bearer {tokens.oauth2.access_token}"


def test_without_a_proxy_gets_go_straight_to_garmin(
    settings: UpstreamSettings,
    emulator: GarminEmulator,
    user: EmulatedUser,
    tokens: GarminTokens,
    proxy: _ForwardingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator.add_activities(user.email, 3)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # NO_PROXY alone names no proxy.
    monkeypatch.setenv("NO_PROXY", "example.com")

    with ConnectApi(settings, tokens.domain) as api:
        page = api.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token, {"start": 0, "limit": 5})

    assert len(page) == 3
    assert proxy.forwarded == []
    assert emulator.api_calls[-1].query == "start=0&limit=5"
