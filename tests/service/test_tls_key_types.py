"""A certificate the service loads (start-up, check-config, a rotation) is one its own clients
can shake hands with. An Ed25519 key (cert-manager's `privateKey.algorithm: Ed25519`) or a
P-521 one passed every check of auth_service.tls (PEM chain, unencrypted key that fits the
leaf) and the server served it, but gRPC's TLS client (the sync worker's, grpcio's) verifies
neither: every handshake failed with NO_COMMON_SIGNATURE_ALGORITHMS while the replicas went
Ready (the probes use the plaintext health port), and a rotation swapped a working
certificate for such a one. Such keys, and RSA under 2048 bits, are now refused when loaded,
naming GARMIN_AUTH_TLS_KEY; the keys that work still do (the worker reaches them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from auth_service.config import TlsSettings
from auth_service.tls import CertificateReloader, TlsFilesError, load_material
from sync_worker.client import AuthClientConfig, _channel

NAME = "garmin-auth"


def self_signed(folder: Path, name: str, key: CertificateIssuerPrivateKeyTypes) -> TlsSettings:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.now(UTC)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, algorithm)
    )
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsSettings(cert_file=cert_file, key_file=key_file)


class Served:
    def __init__(self, reloader: CertificateReloader) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), self.server)
        # As auth_service.server._bind does.
        self.port = self.server.add_secure_port("127.0.0.1:0", reloader.credentials())
        self.server.start()


@pytest.fixture
def serve() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        served.server.stop(0)


def worker_reaches(port: int, ca_file: Path) -> bool:
    """Whether the sync worker's own channel (GARMIN_SYNC_TLS_CA) gets a health answer."""
    config = AuthClientConfig(
        target=f"127.0.0.1:{port}", token="t", tls_ca_file=ca_file, tls_server_name=NAME
    )
    channel = _channel(config)
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    except grpc.RpcError:
        return False
    finally:
        channel.close()
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("p256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("p384", lambda: ec.generate_private_key(ec.SECP384R1())),
        ("rsa2048", lambda: rsa.generate_private_key(65537, 2048)),
    ],
)
def test_a_key_the_worker_can_verify_is_served_and_reached(
    tmp_path: Path,
    serve: list[Served],
    name: str,
    key: Callable[[], CertificateIssuerPrivateKeyTypes],
) -> None:
    settings = self_signed(tmp_path, name, key())
    load_material(settings)
    served = Served(CertificateReloader(settings))
    serve.append(served)
    assert worker_reaches(served.port, settings.cert_file)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("ed25519", ed25519.Ed25519PrivateKey.generate),
        ("p521", lambda: ec.generate_private_key(ec.SECP521R1())),
        ("rsa1024", lambda: rsa.generate_private_key(65537, 1024)),  # noqa: S505 (the weak key refused)
    ],
)
def test_a_key_the_worker_cannot_verify_or_too_weak_is_refused_when_loaded(
    tmp_path: Path, name: str, key: Callable[[], CertificateIssuerPrivateKeyTypes]
) -> None:
    settings = self_signed(tmp_path, name, key())
    with pytest.raises(TlsFilesError) as raised:
        load_material(settings)  # what start-up, check-config and every rotation call
    assert raised.value.variable == "GARMIN_AUTH_TLS_KEY"
