"""Answers the Connect API client gave up on part-way, found by review of the answer cap:

* an answer past MAX_ANSWER_BYTES, or undecodable gzip, had its connection put back in
  urllib3's pool with the rest of its body unread; urllib3 drops a pooled connection only if
  its socket is readable at that instant, so when the rest arrived a moment later the next GET
  on it (the same thread's ConnectApi: the next page, or the next user's sync) read the
  previous answer's remaining body as its own answer. Such a connection is closed now.
* on the requests path (a proxy named) the streamed body was read outside the observer's
  watch: a body cut short counted as "2xx" in the service's metrics. It is read inside now.

A scripted server on real sockets (tests/fixtures/raw_http.py) gives the answers an ordinary
server would not: a body whose end arrives only after the next request, one cut short.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from garmin_client.answer_cap import MAX_ANSWER_BYTES
from garmin_client.connect_api import ConnectApi
from garmin_client.errors import GarminError, Unavailable
from garmin_client.observe import RequestObserver
from garmin_client.settings import UpstreamSettings
from tests.fixtures.raw_http import RawServer, Script, ok_json

pytestmark = pytest.mark.timeout(60)

CHUNK = 256 * 1024
# The last bytes of the first answer's body: they happen to read as an HTTP answer.
TAIL = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n"
    b'{"from": "the first answer"}'
)
SEARCH = "/activitylist-service/activities/search/activities"


def _rest_arrives_late(head: bytes, first_part: Iterator[bytes]) -> Script:
    """An answer whose body is `first_part` then TAIL; TAIL arrives only after the client
    has sent its next request on the connection (a slow network, made deterministic)."""

    def script(conn: socket.socket, _request: bytes) -> None:
        conn.sendall(head)
        for part in first_part:
            conn.sendall(part)
        conn.settimeout(20)
        try:
            conn.recv(65536)  # the client's next request on this connection
        except OSError:
            return
        conn.sendall(TAIL)

    return script


def _settings(server: RawServer) -> UpstreamSettings:
    return UpstreamSettings(
        consumer_key="k", consumer_secret="s", base_url=server.url, timeout_seconds=3.0
    )


def _next_answer_after(script: Script) -> object:
    server = RawServer([script, ok_json])
    try:
        with ConnectApi(_settings(server), "garmin.com") as api:
            with contextlib.suppress(GarminError):  # given up on, whatever it is called
                api.download("/download-service/files/activity/1", "token-of-user-a")
            return api.get_json(SEARCH, "token-of-user-b")
    finally:
        server.close()


def test_after_an_answer_past_the_cap_the_next_get_reads_its_own_answer() -> None:
    sent = MAX_ANSWER_BYTES + CHUNK  # the client stops at the chunk that crosses the cap
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        + f"Content-Length: {sent + len(TAIL)}\r\n\r\n".encode()
    )
    script = _rest_arrives_late(head, iter([b"P" * CHUNK] * (sent // CHUNK)))
    assert _next_answer_after(script) == {"ok": True}


def test_after_an_undecodable_gzip_answer_the_next_get_reads_its_own_answer() -> None:
    # Not gzip: urllib3 raises DecodeError on the first chunk, the rest unread.
    garbage = b"\x00not gzip at all" * (CHUNK // 16)
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Encoding: gzip\r\n"
        + f"Content-Length: {len(garbage) + len(TAIL)}\r\n\r\n".encode()
    )
    script = _rest_arrives_late(head, iter([garbage]))
    assert _next_answer_after(script) == {"ok": True}


class Recorded(RequestObserver):
    """What the service's metrics would count."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.outcomes.append(outcome)


def cut_short(conn: socket.socket, _head: bytes) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        b'{"activityId": 1'
    )
    conn.shutdown(socket.SHUT_RDWR)
    conn.close()
    raise OSError  # this connection is done


@pytest.fixture
def through_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment names a proxy (so ConnectApi sends on requests' Session), which the
    routed base URL bypasses (NO_PROXY)."""
    for name in ("HTTP_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.mark.usefixtures("through_session")
def test_a_body_cut_short_is_no_2xx_for_the_observer() -> None:
    server = RawServer([cut_short] * 5)
    observer = Recorded()
    settings = UpstreamSettings(
        consumer_key="k", consumer_secret="s", base_url=server.url, timeout_seconds=3.0
    )
    try:
        with ConnectApi(settings, "garmin.com", observer) as api:
            assert api._session is not None
            with pytest.raises(Unavailable):
                api.get_json(SEARCH, "token")
    finally:
        server.close()
    assert observer.outcomes == ["error"]
