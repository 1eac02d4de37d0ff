"""The garth login flow (GARMIN_AUTH_LOGIN_FLOW=garth) sends no POST on to a redirect's
Location either (tests/upstream/test_sso_redirect.py: the DI flow).

garth's Client.request leaves requests' default allow_redirects=True: before, a 307 or 308
from /mobile/api/login re-POSTed the JSON body, email and password, to wherever Location
pointed. IsolatedClient's session follows no redirect of a POST; the answer is one the sign-in
does not expect: Garmin unavailable. Two real HTTP servers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from auth_service.domain.errors import GarminUnavailable
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings

pytestmark = pytest.mark.timeout(30)

PASSWORD = "correct horse battery"


class _Server:
    """Answers GETs 200 (garth's cookie page) and POSTs with `post_answer`."""

    def __init__(self, post_answer: tuple[int, dict[str, str]]) -> None:
        self.bodies: list[bytes] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.bodies.append(self.rfile.read(length))
                status, headers = post_answer
                self.send_response(status)
                for name, value in {**headers, "Content-Length": "0"}.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def elsewhere() -> Iterator[_Server]:
    server = _Server((200, {"Content-Type": "application/json"}))
    yield server
    server.close()


@pytest.mark.parametrize("status", [307, 308])
def test_a_redirected_garth_sign_in_post_is_not_sent_on(elsewhere: _Server, status: int) -> None:
    garmin = _Server((status, {"Location": f"{elsewhere.url}/collect"}))
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
