"""The worker refuses to send its bearer token unencrypted beyond this machine (SECURITY.md,
"The deployment": "without a CA it refuses any target beyond its own machine ... so an overlay
that drops the CA cannot send its token in clear"). A loopback target is let through without
TLS, but gRPC routes even a loopback target through the HTTP proxy named by the environment
(http_proxy / https_proxy / grpc_proxy, set on many corporate nodes and pods): the token then
crosses the network, in clear, to the proxy host."""

from __future__ import annotations

import socket
import threading

import pytest

from garmin_client.env import EnvReader
from sync_worker.client import AuthClient
from sync_worker.client_errors import AuthServiceError
from sync_worker.config import ENV_PREFIX, auth_client_config

TOKEN = "proxy-test-worker-token-0123456789abcdef"
# HTTP/1.1 answer to CONNECT, then an empty HTTP/2 SETTINGS frame (what any server sends).
_TUNNEL_OPEN = (
    b"HTTP/1.1 200 Connection established\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
)


class _RecordingProxy:
    """An HTTP CONNECT proxy on another "host" (here a socket): records what crosses it."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except OSError:
                continue
            threading.Thread(target=self._tunnel, args=(connection,), daemon=True).start()

    def _tunnel(self, connection: socket.socket) -> None:
        connection.settimeout(0.5)
        answered = False
        with connection:
            while not self._stop.is_set():
                try:
                    data = connection.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.received += data
                if not answered and b"\r\n\r\n" in self.received:
                    connection.sendall(_TUNNEL_OPEN)
                    answered = True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._server.close()


def test_a_loopback_target_without_tls_never_sends_the_token_to_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = _RecordingProxy()
    try:
        for name in ("no_proxy", "NO_PROXY", "no_grpc_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("http_proxy", "https_proxy", "grpc_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        # What the CronJob would read: a token, no CA, the service on this machine (a
        # sidecar, a port-forward). The worker accepts it as "this machine only".
        env = EnvReader({f"{ENV_PREFIX}AUTH_TOKEN": TOKEN}, ENV_PREFIX)
        config = auth_client_config(env, "127.0.0.1:1", rpc_timeout=1.0)
        assert config.tls_ca_file is None
        with (
            AuthClient(config, sleep=lambda _seconds: None) as client,
            pytest.raises(AuthServiceError),
        ):
            client.get_status("alice")
    finally:
        proxy.close()
    assert TOKEN.encode() not in proxy.received, (
        "the worker's bearer token went in clear through the HTTP proxy of the environment "
        f"({len(proxy.received)} bytes crossed it, 'authorization: Bearer {TOKEN[:12]}...' "
        "among them) although the worker allowed plaintext only because the target is on "
        "this machine"
    )
