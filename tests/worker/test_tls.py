"""The worker's TLS options against the real servicer behind a TLS (mutual) gRPC port."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from auth_service.api.interceptor import ServiceInterceptor
from auth_service.api.servicer import GarminAuthServicer
from auth_service.config import Settings
from auth_service.server import build_application
from auth_service.upstream.emulator import GarminEmulator
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.fixtures.servers import Replica

from . import connect, make_config, run_worker

pytestmark = pytest.mark.timeout(60)
SERVER_NAME = "garmin-auth.test"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    dns_name: str | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if dns_name:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _certificate("test CA", ca_key, None)
    files: dict[str, bytes] = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for role, dns_name in (("server", SERVER_NAME), ("client", None)):
        key = _key()
        cert = _certificate(role, key, (ca, ca_key), dns_name=dns_name)
        files[f"{role}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{role}-key.pem"] = _pem_key(key)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client-key.pem",
    )


@pytest.fixture
def tls_target(service: Replica, service_settings: Settings, pki: Pki) -> Iterator[str]:
    """The real servicer and interceptor on a port that requires a client certificate;
    same database as `service`."""
    application = build_application(service_settings)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[ServiceInterceptor(application.callers)],
    )
    pb_grpc.add_GarminAuthServiceServicer_to_server(
        GarminAuthServicer(application.sessions, application.leases), server
    )
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()
        application.engine.dispose()


def test_the_worker_syncs_over_mutual_tls(
    service: Replica, garmin: GarminEmulator, tls_target: str, pki: Pki, tmp_path: Path
) -> None:
    connect(service, garmin, "tia", activities=2)
    config = make_config(tls_target, garmin, tmp_path, users=("tia",))
    tls = dataclasses.replace(
        config.auth,
        tls_ca_file=pki.ca,
        tls_cert_file=pki.client_cert,
        tls_key_file=pki.client_key,
        tls_server_name=SERVER_NAME,
    )

    result = run_worker(dataclasses.replace(config, auth=tls))

    assert result.exit_code == 0
    assert result.outcome("tia") == "SYNCED"
    assert result.users["tia"]["items"] == 2


@pytest.mark.parametrize("problem", ["plaintext", "no-client-cert", "wrong-server-name"])
def test_a_tls_mismatch_is_the_auth_service_being_unreachable(
    service: Replica,
    garmin: GarminEmulator,
    tls_target: str,
    pki: Pki,
    tmp_path: Path,
    problem: str,
) -> None:
    connect(service, garmin, "uma", activities=1)
    config = make_config(tls_target, garmin, tmp_path, users=("uma",))
    auth = {
        "plaintext": config.auth,
        "no-client-cert": dataclasses.replace(
            config.auth, tls_ca_file=pki.ca, tls_server_name=SERVER_NAME
        ),
        "wrong-server-name": dataclasses.replace(
            config.auth,
            tls_ca_file=pki.ca,
            tls_cert_file=pki.client_cert,
            tls_key_file=pki.client_key,
            tls_server_name="someone-else.test",
        ),
    }[problem]

    result = run_worker(dataclasses.replace(config, auth=auth))

    assert result.exit_code == 3
    assert result.report.fatal is not None
    assert result.report.fatal.unreachable
    assert "uma" not in result.users
