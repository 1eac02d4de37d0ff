"""The webhook sender (auth_service.upstream.webhook) at its edges: a host name the HTTP stack
refuses, credentials in the URL, and a name that resolves to several unreachable addresses.
No replica, no database: the sender against a local HTTP server, or against nothing.

Before:
- a POST to a host name urllib3 cannot encode (an empty DNS label, one over 63 characters)
  raised urllib3's LocationParseError, a ValueError outside requests' exceptions, instead of
  WebhookUndelivered: the delivery pass died before recording the failed attempt;
- `user:password@` in the URL was silently not sent (upstream_session()'s no-op auth, the guard
  against a netrc file, also stops requests from sending a URL's credentials): a receiver
  protected that way answered 401 to every POST, for ever; and the sender's repr showed them;
- urllib3 gave each address of the receiver's name a whole connect timeout, so a name with six
  addresses that drop packets held a POST for six timeouts, past its deadline (twice the
  timeout) and past the cursor's claim (4 x timeout + 10 s): another replica could post too.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from auth_service.domain.change_ports import WebhookUndelivered
from auth_service.upstream.webhook import HttpWebhookSender
from tests.stream import WEBHOOK_SECRET

BODY = b'{"cursor":"1"}'


def _sender(url: str, timeout: float = 2.0) -> HttpWebhookSender:
    return HttpWebhookSender(url, WEBHOOK_SECRET.encode(), timeout_seconds=timeout)


# --- a host name the HTTP stack refuses --------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks..example.com/hooks",  # an empty label (a doubled dot)
        "https://" + "a" * 64 + ".example.com/hooks",  # a label over 63 characters
    ],
)
def test_a_post_to_a_host_name_that_cannot_be_encoded_is_undelivered(url: str) -> None:
    """WebhookSender's contract: WebhookUndelivered unless the receiver answered 2xx, naming
    the failure's type only (never the URL). Before, LocationParseError escaped."""
    with pytest.raises(WebhookUndelivered) as raised:
        _sender(url).send(BODY)
    assert "example.com" not in str(raised.value)


# --- credentials in the URL --------------------------------------------------------------------

# Percent-encoded in the URL: "@" and a non-Latin-1 character (UTF-8 octets), as RFC 3986 asks.
URL_USER = "hooks"
URL_PASSWORD = "s3cret%40p%C3%A4ss%E2%82%AC"
DECODED_CREDENTIALS = b"hooks:s3cret@p\xc3\xa4ss\xe2\x82\xac"


class _Recorder(BaseHTTPRequestHandler):
    """Answers 200 to a POST with an Authorization header, 401 to one without."""

    seen: list[tuple[str, dict[str, str]]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, dict(self.headers)))
        self.send_response(200 if self.headers.get("Authorization") else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        return


@contextlib.contextmanager
def _recording() -> Iterator[tuple[int, list[tuple[str, dict[str, str]]]]]:
    seen: list[tuple[str, dict[str, str]]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Recorder,), {"seen": seen}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def test_credentials_in_the_webhook_url_go_as_http_basic() -> None:
    """The URL's userinfo goes, percent-decoded, as HTTP Basic; the request carries no other
    trace of it. Before, no Authorization header was sent and the receiver answered 401."""
    with _recording() as (port, seen):
        _sender(f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{port}/hooks").send(BODY)
    [(path, headers)] = seen
    assert headers["Authorization"] == "Basic " + base64.b64encode(DECODED_CREDENTIALS).decode()
    assert path == "/hooks"


def test_the_senders_repr_never_shows_the_urls_credentials() -> None:
    """Before, repr(sender) quoted the whole URL, password included."""
    shown = repr(_sender(f"https://{URL_USER}:{URL_PASSWORD}@hooks.example.com/hooks"))
    assert URL_PASSWORD not in shown
    assert "hooks.example.com/hooks" in shown


# --- the POST's deadline -----------------------------------------------------------------------


@contextlib.contextmanager
def _blackholes(count: int) -> Iterator[tuple[list[str], int]]:
    """`count` loopback addresses with one port each whose SYNs are dropped (a listener
    whose accept queue is full): a connect to them hangs until its timeout, as to a host
    behind a firewall that drops packets."""
    port = 0
    listeners: list[socket.socket] = []
    fillers: list[socket.socket] = []
    addresses = [f"127.0.0.{index}" for index in range(2, 2 + count)]
    try:
        for address in addresses:
            listener = socket.socket()
            listener.bind((address, port))
            port = listener.getsockname()[1]
            listener.listen(0)
            listeners.append(listener)
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect((address, port))
                fillers.append(filler)
        time.sleep(0.2)
        yield addresses, port
    finally:
        for sock in fillers + listeners:
            sock.close()


def test_a_post_to_a_name_with_several_dead_addresses_ends_by_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README: GARMIN_AUTH_WEBHOOK_TIMEOUT is "seconds to connect, and to wait for the answer,
    per POST; a POST ends within twice this in all". Now each address is tried for the
    connect timeout or the time left, and none after the deadline. Before, with six addresses
    a POST took six timeouts (the deadline's timer cannot reach a socket still connecting)."""
    timeout = 0.5
    with _blackholes(6) as (addresses, port):
        resolve = socket.getaddrinfo

        def receivers_name(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "hooks.example.test":  # a load balancer's name: six A records
                return [
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                    for address in addresses
                ]
            return resolve(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", receivers_name)
        sender = _sender(f"http://hooks.example.test:{port}/hooks", timeout)
        started = time.monotonic()
        with pytest.raises(WebhookUndelivered):
            sender.send(BODY)
        took = time.monotonic() - started
    assert took < 2 * timeout + 0.5, f"the POST took {took:.1f} s, deadline {2 * timeout:g} s"
