"""ConnectApi verifies Garmin's certificate: against certifi's bundle by default, or the bundle
REQUESTS_CA_BUNDLE (else CURL_CA_BUNDLE) names, as requests does. An HTTPS server with a
certificate from a test CA stands in for Garmin."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from garmin_client.connect_api import ConnectApi
from garmin_client.errors import Unavailable
from garmin_client.settings import UpstreamSettings
from tests.fixtures.certificates import Authority
from tests.fixtures.http_servers import QuietHandler, serving

pytestmark = pytest.mark.timeout(30)
PAGE = [{"activityId": 1}]


class _Page(QuietHandler):
    def do_GET(self) -> None:
        body = json.dumps(PAGE).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def authority() -> Authority:
    return Authority.create("test-garmin-ca")


@pytest.fixture
def https_url(authority: Authority, tmp_path: Path) -> Iterator[str]:
    cert, key = authority.issue_server().write(tmp_path, "server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serving(server):
        yield f"https://127.0.0.1:{server.server_address[1]}"


def _settings(url: str) -> UpstreamSettings:
    return UpstreamSettings(
        consumer_key="", consumer_secret="", base_url=url, timeout_seconds=2.0, retries=0
    )


@pytest.fixture
def no_ca_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_ca_variables")
def test_a_certificate_no_trusted_ca_signed_is_refused(https_url: str) -> None:
    refused = pytest.raises(Unavailable, match="could not be reached")
    with ConnectApi(_settings(https_url), "garmin.com") as api, refused:
        api.get_json("/activitylist-service/activities/search/activities", "token")


@pytest.mark.usefixtures("no_ca_variables")
@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_named_ca_bundle_is_trusted(
    https_url: str,
    authority: Authority,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, str(authority.write(tmp_path)))

    with ConnectApi(_settings(https_url), "garmin.com") as api:
        page = api.get_json("/activitylist-service/activities/search/activities", "token")

    assert page == PAGE
