"""Anonymous clients cannot make a TLS replica write non-JSON lines on stderr (README
"Logs": the service writes JSON lines). gRPC's C core logs failed TLS handshakes itself; before,
nothing set GRPC_VERBOSITY, and any client reaching the port without TLS (a port scanner, a
plaintext grpcurl, a TCP load-balancer check) added lines a JSON pipeline cannot parse.
`serve` now defaults GRPC_VERBOSITY to ERROR."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc

from tests.fixtures.certificates import Authority
from tests.service.test_cli import CLI, base_env, free_port, run_cli


def _not_json(line: str) -> bool:
    try:
        return not isinstance(json.loads(line), dict)
    except ValueError:
        return True


def test_failed_handshakes_write_no_unstructured_lines(tmp_path: Path) -> None:
    server = Authority.create("test CA").issue_server()
    cert, key = server.write(tmp_path / "tls", "server")
    port = free_port()
    env = base_env(
        tmp_path,
        GARMIN_AUTH_LISTEN=f"127.0.0.1:{port}",
        GARMIN_AUTH_TLS_CERT=str(cert),
        GARMIN_AUTH_TLS_KEY=str(key),
        GARMIN_AUTH_LOG_LEVEL="WARNING",
    )
    assert run_cli("migrate", env=env).returncode == 0
    process = subprocess.Popen(
        [CLI, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        # Anonymous clients that do not speak TLS.
        for _ in range(3):
            with (
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
                contextlib.suppress(grpc.FutureTimeoutError),
            ):
                grpc.channel_ready_future(channel).result(timeout=1)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.2)
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    stderr = process.stderr.read() if process.stderr else ""
    unstructured = [
        line
        for line in stderr.splitlines()
        if line.strip() and "listening on port" not in line and _not_json(line)
    ]
    assert unstructured == [], f"{len(unstructured)} non-JSON lines, e.g. {unstructured[0]!r}"
