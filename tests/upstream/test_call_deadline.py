"""A call to Garmin through the transport ends within its retry budget (timeout x attempts) as
a whole, however its answer arrives. The refresh claim, the account's call claim and the MFA
claim are all sized on that promise (garmin_client.settings.UpstreamSettings). requests'
timeout bounds each read only, and a non-streamed body was read after the transport had
returned: an answer that trickled in, a byte every 0.2 s, held a 0.5 s call for 6 s and more,
past its refresh claim, while another replica claimed the session and sent the refresh token
Garmin had just rotated (tests/refresh/test_claim_outlives_the_call.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

import pytest
import requests

from garmin_client.http_session import upstream_session
from garmin_client.settings import UpstreamSettings
from garmin_client.transport import UpstreamTransport
from tests.fixtures.http_servers import QuietHandler, serving

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 0.5
GAP = 0.2  # well inside the read timeout: no single read ever times out
TRICKLE_SECONDS = 6.0
ANSWER = b'{"access_token": "' + b"x" * 200 + b'"}'


class Trickler(QuietHandler):
    """Answers every POST a byte at a time, GAP apart, from the status line on (`head`) or
    after the headers (`body`)."""

    protocol_version = "HTTP/1.1"
    part = "body"
    posts = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).posts += 1
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(ANSWER)}\r\nConnection: close\r\n\r\n".encode()
        )
        if self.part == "body":
            self.wfile.write(head)
            self._trickle(ANSWER)
        else:
            self._trickle(head + ANSWER)
        self.close_connection = True

    def _trickle(self, data: bytes) -> None:
        ends = time.monotonic() + TRICKLE_SECONDS
        sent = 0
        try:
            while sent < len(data) and time.monotonic() < ends:
                self.wfile.write(data[sent : sent + 1])
                self.wfile.flush()
                sent += 1
                time.sleep(GAP)
            self.wfile.write(data[sent:])
        except OSError:
            pass  # the client gave up on us: what the test wants


@contextmanager
def trickling(part: str) -> Iterator[str]:
    handler = type("Handler", (Trickler,), {"part": part, "posts": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}"


def _post(base_url: str, retries: int) -> float:
    settings = UpstreamSettings(
        consumer_key="k",
        consumer_secret="s",
        base_url=base_url,
        timeout_seconds=TIMEOUT,
        retries=retries,
    )
    started = time.monotonic()
    with upstream_session() as session:
        session.mount("https://", UpstreamTransport(settings))
        with pytest.raises(requests.Timeout, match="no answer from Garmin within"):
            session.post(
                "https://diauth.garmin.com/di-oauth2-service/oauth/token",
                data={"grant_type": "refresh_token"},
            )
    return time.monotonic() - started


@pytest.mark.parametrize("part", ["body", "head"])
@pytest.mark.parametrize("retries", [0, 2])
def test_a_trickling_answer_ends_the_call_within_its_budget(part: str, retries: int) -> None:
    budget = TIMEOUT * (retries + 1)
    with trickling(part) as url:
        elapsed = _post(url, retries)
    assert elapsed < budget + 0.5, f"{elapsed:.1f} s for a {budget:g} s budget"
