"""GARMIN_SYNC_TLS_KEY is checked at start-up as the CA and the certificate are
(tests/worker/test_tls_ca_file.py): a file that holds no private key (a wrong Secret key, a
truncated mount, the certificate mounted twice), an encrypted one, or the key of another
certificate made every handshake fail, and after 6 s of retries the run said "the auth service
is unreachable" (exit 3), sending the operator to the network. Now exit 2 naming the variable.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from auth_service.config import TlsSettings
from garmin_emulator import GarminEmulator
from tests.fixtures.certificates import Authority
from tests.fixtures.servers import ServiceFactory
from tests.worker import WORKER_SCRIPT, worker_env

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the service's database plays no part: the worker stops before calling


def _encrypted(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase"),
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("garbage", "holds no PEM private key"),
        ("the certificate", "holds no PEM private key"),
        ("another certificate's key", "is not the key of"),
        ("an encrypted key", "is encrypted"),
    ],
)
def test_a_key_file_that_cannot_serve_the_certificate_is_a_configuration_error(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    tmp_path: Path,
    content: str,
    says: str,
) -> None:
    authority = Authority.create("worker key CA")
    server_cert, server_key = authority.issue_server().write(tmp_path, "server")
    ca = authority.write(tmp_path)
    tls = service_factory.start(tls=TlsSettings(server_cert, server_key, client_ca_file=ca))
    client = authority.issue("sync-worker")
    client_cert, _ = client.write(tmp_path, "client")
    bad_key = tmp_path / "bad.key"
    bad_key.write_bytes(
        {
            "garbage": b"not a key\n",
            "the certificate": client_cert.read_bytes(),
            "another certificate's key": authority.issue("someone-else").key_pem,
            "an encrypted key": _encrypted(client.key_pem),
        }[content]
    )
    env = worker_env(
        tls.target,
        garmin,
        GARMIN_SYNC_TLS_CA=str(ca),
        GARMIN_SYNC_TLS_CERT=str(client_cert),
        GARMIN_SYNC_TLS_KEY=str(bad_key),
        GARMIN_SYNC_TLS_SERVER_NAME="localhost",
    )
    result = subprocess.run(
        [WORKER_SCRIPT, "run", "--user", "kay", "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-400:])
    assert "GARMIN_SYNC_TLS_KEY" in result.stderr
    assert says in result.stderr
