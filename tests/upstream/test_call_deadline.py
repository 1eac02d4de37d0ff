"""The whole-call deadline of the service's calls to Garmin (garmin_client.transport with
garmin_client.call_deadline): a sign-in, ticket or refresh call ends within its retry budget
(timeout x attempts) as a whole, however its answer arrives. The refresh claim, the account's
call claim and the MFA claim are sized on that promise. requests' timeout bounds each read
only, and a non-streamed body was read after the transport had returned: an answer that
trickled in, a byte every 0.2 s, held a 0.5 s call for 6 s and more, past its refresh claim,
while another replica claimed the session and sent the refresh token Garmin had just rotated
(tests/refresh/test_claim_outlives_the_call.py).

The Connect API client takes its bound from its caller, on either of its paths: the worker a
generous one, so that a large file arriving steadily is no failure
(GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT: tests/worker/test_trickling_answer.py), and
GetStatus(validate)'s profile GET its retry budget (tests/upstream/test_validate_call_bound.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

import pytest
import requests

from garmin_client.connect_api import ConnectApi
from garmin_client.http_session import upstream_session
from garmin_client.settings import UpstreamSettings
from garmin_client.transport import UpstreamTransport
from tests.fixtures.http_servers import QuietHandler, serving

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 0.5
GAP = 0.2  # well inside the read timeout: no single read ever times out
TRICKLE_SECONDS = 6.0
BODY = b'{"access_token": "' + b"x" * 100 + b'"}'
TOKEN_URL = "https://diauth.garmin.com/di-oauth2-service/oauth/token"
FILE_PATH = "/download-service/files/activity/1"


class _Trickler(QuietHandler):
    """Answers a GET or POST 200 a byte at a time, GAP apart, for `trickle_seconds`, then
    the rest at once: from the status line on (`part` "head") or after the headers ("body").
    `framing` marks the body's end by Content-Length ("length") or, as HTTP/1.1 allows, by
    closing the connection ("close")."""

    protocol_version = "HTTP/1.1"
    part = "body"
    framing = "length"
    trickle_seconds = TRICKLE_SECONDS
    body = BODY

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        if self.framing == "length":
            head += f"Content-Length: {len(self.body)}\r\n"
        head_bytes = (head + "\r\n").encode()
        if self.part == "head":
            self._trickle(head_bytes + self.body)
        else:
            self.wfile.write(head_bytes)
            self._trickle(self.body)
        self.close_connection = True

    def _trickle(self, data: bytes) -> None:
        ends = time.monotonic() + self.trickle_seconds
        sent = 0
        try:
            while sent < len(data) and time.monotonic() < ends:
                self.wfile.write(data[sent : sent + 1])
                self.wfile.flush()
                sent += 1
                time.sleep(GAP)
            self.wfile.write(data[sent:])
        except OSError:
            pass  # the client gave up on us

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()


@contextmanager
def trickling(**answer: object) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Trickler,), answer))
    server.daemon_threads = True
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}"


def _settings(base_url: str, retries: int = 0) -> UpstreamSettings:
    return UpstreamSettings(
        consumer_key="k",
        consumer_secret="s",
        base_url=base_url,
        timeout_seconds=TIMEOUT,
        retries=retries,
    )


class _Observer:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.outcomes.append(outcome)


@pytest.mark.parametrize("part", ["body", "head"])
@pytest.mark.parametrize("retries", [0, 2])
def test_a_trickling_answer_ends_the_call_within_its_budget(part: str, retries: int) -> None:
    budget = TIMEOUT * (retries + 1)
    with trickling(part=part) as url, upstream_session() as session:
        session.mount("https://", UpstreamTransport(_settings(url, retries)))
        started = time.monotonic()
        with pytest.raises(requests.Timeout, match="no answer from Garmin within"):
            session.post(TOKEN_URL, data={"grant_type": "refresh_token"})
        elapsed = time.monotonic() - started
    assert elapsed < budget + 0.5, f"{elapsed:.1f} s for a {budget:g} s budget"


def test_an_answer_ended_by_closing_is_not_returned_whole_when_the_deadline_cut_it() -> None:
    """Without a Content-Length, the deadline's socket shutdown read as the body's end: the
    transport returned 200 with a few bytes of the body instead of timing out."""
    with trickling(framing="close") as url, upstream_session() as session:
        session.mount("https://", UpstreamTransport(_settings(url)))
        with pytest.raises(requests.Timeout, match="no answer from Garmin within"):
            session.post(TOKEN_URL, data={"grant_type": "refresh_token"})


def test_a_call_cut_by_the_deadline_is_counted_as_a_timeout() -> None:
    # garmin_auth_upstream_requests_total{outcome} counted it as an `error` before.
    observer = _Observer()
    with trickling() as url, upstream_session() as session:
        session.mount("https://", UpstreamTransport(_settings(url), observer))
        with pytest.raises(requests.Timeout):
            session.post(TOKEN_URL, data={"grant_type": "refresh_token"})
    assert observer.outcomes == ["timeout"]


@pytest.mark.parametrize("framing", ["length", "close"])
@pytest.mark.parametrize("proxy", [False, True])
def test_a_steady_download_is_not_cut_on_either_connect_api_path(
    monkeypatch: pytest.MonkeyPatch, framing: str, proxy: bool
) -> None:
    """The worker's Connect API client goes through UpstreamTransport when a proxy is named,
    on urllib3 without one. Through the proxy a download arriving steadily (every read well
    within the timeout) failed once timeout x attempts had passed, and a body ended by closing
    came back cut short, as if whole; without one it downloaded whole. Both paths now agree."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxy:
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the routed base URL bypasses it
    with (
        trickling(framing=framing, trickle_seconds=2.0) as url,
        ConnectApi(_settings(url), "garmin.com") as api,
    ):
        assert api.download(FILE_PATH, "token") == BODY
