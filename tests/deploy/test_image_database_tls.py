"""The database URL deploy/kubernetes/secrets.example.yaml tells operators to use,
`...?sslmode=verify-full&sslrootcert=system` ("the server's certificate checked against the
system's CAs"), connects from the image to a PostgreSQL whose certificate the system's CA store
trusts.

The image (Dockerfile) is python:3.11-slim-bookworm, whose system store is Debian's
/etc/ssl/certs/ca-certificates.crt, and it installs psycopg-binary, whose bundled OpenSSL looks
for CAs in /usr/lib/psycopg-openssl, a folder that does not exist: with `sslrootcert=system`
libpq trusted no CA unless SSL_CERT_FILE says otherwise. Before, the Dockerfile did not set it,
and every verify-full connection (migrate, check-config, serve, the worker's PostgreSQL sink)
failed with "certificate verify failed".

Reproduced without touching the machine: in a private mount namespace (`unshare -m`) the Debian
store file is replaced by a bundle holding a test CA, so "the system's CAs" trust a local TLS
PostgreSQL endpoint. Python's own ssl module verifies it (the control); psycopg, run with the
environment the image's runtime stage sets (its ENV lines), must too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.certificates import Authority

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_STORE = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's, as in the image
MARKER = "reached-the-server-after-verifying-it"
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def runtime_env_of_the_image() -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (the image's), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    stages = re.split(r"^FROM .*$", text, flags=re.M)
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        if line.startswith("ENV "):
            for name, value in re.findall(r"(\w+)=(\S+)", line):
                env[name] = value
    return env


def example_database_url() -> str:
    text = (ROOT / "deploy/kubernetes/secrets.example.yaml").read_text(encoding="utf-8")
    [url] = re.findall(r"database-url: (\S+)", text)
    return str(url)


class FakeTlsPostgres:
    """Answers PostgreSQL's SSLRequest with 'S', does the TLS handshake with a certificate for
    localhost, then refuses the startup message with an error naming MARKER: a client that
    reports MARKER has verified the certificate."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client: socket.socket) -> None:
        try:
            client.settimeout(10)
            if client.recv(8) != SSL_REQUEST:
                return
            client.sendall(b"S")
            with self.context.wrap_socket(client, server_side=True) as tls:
                tls.recv(4096)  # the startup message
                fields = b"SFATAL\0C28000\0M" + MARKER.encode() + b"\0\0"
                tls.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
        except (OSError, ssl.SSLError):
            pass
        finally:
            client.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[FakeTlsPostgres, Path]]:
    authority = Authority.create("test system CA")
    issued = authority.issue(
        "localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), server=True
    )
    cert, key = issued.write(tmp_path, "server")
    # The "system store" inside the namespace: the real one plus the test CA.
    bundle = tmp_path / "ca-certificates.crt"
    bundle.write_bytes(SYSTEM_STORE.read_bytes() + authority.pem)
    fake = FakeTlsPostgres(cert, key)
    yield fake, bundle
    fake.close()


CLIENT = r"""
import json, socket, ssl, struct, sys
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from auth_service.storage.database import create_engine_for
url, port = sys.argv[1], int(sys.argv[2])
result = {}
# Python's ssl module with the system's CAs (the control: the store does trust the server).
try:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S"
        with ssl.create_default_context().wrap_socket(raw, server_hostname="localhost"):
            result["python_ssl"] = "verified"
except Exception as exc:
    result["python_ssl"] = f"{type(exc).__name__}: {exc}"
# The service's own engine, as `serve`, `migrate` and `check-config` open it.
try:
    with create_engine_for(url).connect() as connection:
        connection.execute(text("SELECT 1"))
    result["psycopg"] = "connected"
except OperationalError as exc:
    result["psycopg"] = str(exc.orig)
print(json.dumps(result))
"""


@pytest.mark.skipif(
    not SYSTEM_STORE.exists() or shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs Debian's CA store, unshare and root for a private mount namespace",
)
def test_the_example_database_url_verifies_against_the_system_cas_in_the_image(
    server: tuple[FakeTlsPostgres, Path], tmp_path: Path
) -> None:
    fake, bundle = server
    url = example_database_url()
    assert "sslrootcert=system" in url
    assert "sslmode=verify-full" in url
    # The example URL, pointed at the local endpoint (host and port only).
    url = re.sub(r"@[^/]+/", f"@localhost:{fake.port}/", url)
    script = tmp_path / "client.py"
    script.write_text(CLIENT, encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"SSL_CERT_FILE", "SSL_CERT_DIR", "PGSSLROOTCERT"}
    }
    image_env = runtime_env_of_the_image()
    image_env.pop("PATH", None)
    env.update(image_env)
    command = (
        f"mount --bind {bundle} {SYSTEM_STORE} && "
        f"exec {sys.executable} {script} '{url}' {fake.port}"
    )
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    # The system store does trust the endpoint ...
    assert outcome["python_ssl"] == "verified", outcome
    # ... so the URL the example Secret recommends must get past TLS verification to the
    # server (which then refuses the login with MARKER).
    assert MARKER in outcome["psycopg"], outcome["psycopg"]
