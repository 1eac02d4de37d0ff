"""An SSO POST is never followed to another place: a redirect that keeps its method (307, 308)
would send the email and password, or the MFA code, to wherever its Location points. The
impersonating path never followed one; the plain-requests path (GARMIN_AUTH_DI_PLAIN_HTTP)
followed it. A redirect is one more answer the sign-in does not expect, judged as such.

Two real HTTP servers: the "Garmin" every request is routed to answers 307 to the other,
which records what reaches it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from auth_service.upstream.di.sso_http import SsoHttp
from garmin_client.settings import UpstreamSettings

pytestmark = pytest.mark.timeout(30)

SSO_LOGIN = "https://sso.garmin.com/mobile/api/login"


class _Server:
    def __init__(self, answer: tuple[int, dict[str, str]]) -> None:
        self.bodies: list[bytes] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.bodies.append(self.rfile.read(length))
                status, headers = answer
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
@pytest.mark.parametrize("plain_http", [True, False])
def test_a_redirected_sign_in_post_is_not_sent_on(
    elsewhere: _Server, status: int, plain_http: bool
) -> None:
    garmin = _Server((status, {"Location": f"{elsewhere.url}/collect"}))
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
