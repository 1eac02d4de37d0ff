"""Webhooks through an HTTPS proxy to an https:// receiver are all delivered. Before, after
3774057, a POST that took its connection kept alive from the pool registered urllib3's
socket with its deadline by family and type, and through an HTTPS proxy to an https://
receiver that socket is a TLS-in-TLS transport with neither: every other POST raised
AttributeError (not WebhookUndelivered: no backoff recorded, the connection leaked). Real TLS
CONNECT proxy, real HTTPS receiver, the test CA."""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from auth_service.upstream.webhook import HttpWebhookSender
from tests.fixtures.certificates import Authority
from tests.stream import WEBHOOK_SECRET
from tests.stream.slow_receivers import SlowReceiver

pytestmark = pytest.mark.timeout(60)

BODY = b'{"cursor":"1"}'


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    return listener


@contextmanager
def _accepting(
    listener: socket.socket, handle: Callable[[socket.socket], None], stopping: threading.Event
) -> Iterator[int]:
    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    sockets = [client, upstream]
    while True:
        ready, _, _ = select.select(sockets, [], [], 5)
        if not ready:
            return
        for sock in ready:
            # An SSLSocket may hold decrypted bytes select cannot see: read what is there.
            data = sock.recv(65536)
            if not data:
                return
            (upstream if sock is client else client).sendall(data)
            while isinstance(sock, ssl.SSLSocket) and sock.pending():
                more = sock.recv(65536)
                (upstream if sock is client else client).sendall(more)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    authority = Authority.create("review-ca")
    ca = authority.write(tmp_path)
    cert, key = authority.issue_server().write(tmp_path, "server")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return ca, context


def test_posts_through_an_https_proxy_to_an_https_receiver_are_all_delivered(
    tls: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, server_context = tls
    receiver = SlowReceiver("plain")
    tunnels: list[int] = []

    def serve_receiver(conn: socket.socket) -> None:
        try:
            wrapped = server_context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        receiver.serve(wrapped)

    def serve_proxy(conn: socket.socket) -> None:
        try:
            client = server_context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            target = head.split(b" ")[1].decode()
            host, port = target.rsplit(":", 1)
            tunnels.append(1)
            with socket.create_connection((host, int(port)), timeout=5) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                _pipe(client, upstream)

    stop_receiver, stop_proxy = receiver.stopping, threading.Event()
    with (
        _accepting(_listener(), serve_receiver, stop_receiver) as receiver_port,
        _accepting(_listener(), serve_proxy, stop_proxy) as proxy_port,
    ):
        monkeypatch.setenv("HTTPS_PROXY", f"https://127.0.0.1:{proxy_port}")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
        for name in ("NO_PROXY", "no_proxy", "https_proxy", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        sender = HttpWebhookSender(
            f"https://127.0.0.1:{receiver_port}/hooks",
            WEBHOOK_SECRET.encode(),
            timeout_seconds=2.0,
        )
        for _ in range(3):
            sender.send(BODY)  # raises WebhookUndelivered, or worse, on a failure
        posts = receiver.posts
    assert tunnels, "the POSTs did not go through the proxy"
    assert posts == 3
