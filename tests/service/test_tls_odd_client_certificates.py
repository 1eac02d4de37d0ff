"""Client certificates signed by the mutual-TLS CA whose names match no callers entry, over
real TLS: each answers UNAUTHENTICATED CALLER_UNAUTHENTICATED (README, TLS and mutual TLS),
never INTERNAL.

Before: a dNSName that is not even UTF-8 passed gRPC's handshake (the CA signed it), but
`cryptography` refuses to parse such an extension, and the ValueError escaped as INTERNAL. A
certificate with ~80 names made the refusal quote them all, past gRPC's 8 KiB metadata limit."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from auth_service import tls
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.fixtures.certificates import Authority, Issued, _key_pem
from tests.fixtures.servers import RpcFailure, expect_failure
from tests.service import test_tls
from tests.service.test_tls import Pki, StartTls, TlsServer

# test_tls's fixtures: SQLite only, a throw-away PKI, replicas started with (mutual) TLS.
backend, pki, start_tls = test_tls.backend, test_tls.pki, test_tls.start_tls

pytestmark = pytest.mark.timeout(60)

UNKNOWN_CALLER = (grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED")
COMMON_NAME = "odd-client-cn"


def _issue(ca: Authority, extension: x509.ExtensionType) -> Issued:
    """A client certificate from `ca` carrying `extension` as it is."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(extension, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(
        certificate.public_bytes(serialization.Encoding.PEM),
        _key_pem(key),
        certificate.serial_number,
    )


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _raw_dns_names(names: list[bytes]) -> x509.UnrecognizedExtension:
    """A subjectAltName of dNSName entries ([2] IMPLICIT IA5String) holding these bytes, which
    cryptography's own DNSName would refuse to build."""
    entries = b"".join(b"\x82" + _der_length(len(name)) + name for name in names)
    return x509.UnrecognizedExtension(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30" + _der_length(len(entries)) + entries
    )


def _get_status_as(server: TlsServer, client: Issued) -> RpcFailure:
    stub = pb_grpc.GarminAuthServiceStub(server.channel(client=client))
    return expect_failure(lambda: stub.GetStatus(pb.GetStatusRequest(user_id="alice"), timeout=5))


@pytest.mark.parametrize(
    "names",
    [
        [b"caf\xc3\xa9.example"],  # UTF-8, not IA5
        [b"bad-\xff-name.example"],  # not even UTF-8: cryptography cannot parse it
        [b"nul\x00.example"],
    ],
    ids=["utf8", "not-utf8", "nul"],
)
def test_a_certificate_with_an_odd_dns_name_is_an_unknown_caller(
    start_tls: StartTls, pki: Pki, names: list[bytes]
) -> None:
    server = start_tls(mutual=True)
    failure = _get_status_as(server, _issue(pki.ca, _raw_dns_names(names)))
    assert (failure.code, failure.reason) == UNKNOWN_CALLER, failure


def test_an_unreadable_san_logs_one_warning_naming_only_the_serial(
    start_tls: StartTls, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Its common name does not count either: a certificate with subject alternative names
    is identified by them alone (RFC 6125), and these cannot be read."""
    server = start_tls(mutual=True)
    client = _issue(pki.ca, _raw_dns_names([b"bad-\xff-name.example"]))
    with caplog.at_level(logging.WARNING, logger=tls.__name__):
        for _ in range(2):
            failure = _get_status_as(server, client)
            assert (failure.code, failure.reason) == UNKNOWN_CALLER, failure
    warnings = [record.getMessage() for record in caplog.records if record.name == tls.__name__]
    assert len(warnings) == 1, warnings  # once per certificate, not once per call
    # As openssl prints it: an unbroken 40-digit hex would be masked as a token.
    serial = client.serial.to_bytes((client.serial.bit_length() + 7) // 8, "big")
    assert ":".join(f"{byte:02x}" for byte in serial) in warnings[0]
    assert COMMON_NAME not in warnings[0]
    assert "bad-" not in warnings[0]


def test_a_certificate_with_many_names_gets_a_short_refusal(start_tls: StartTls, pki: Pki) -> None:
    """80 names of 100 characters: quoting all of them passed gRPC's 8 KiB limit on an
    answer's metadata, and the caller saw INTERNAL instead of the refusal."""
    server = start_tls(mutual=True)
    names = [f"{index:03d}-{'n' * 84}.example" for index in range(80)]
    client = _issue(pki.ca, x509.SubjectAlternativeName([x509.DNSName(name) for name in names]))

    failure = _get_status_as(server, client)

    assert (failure.code, failure.reason) == UNKNOWN_CALLER, failure
    assert names[0] in failure.message  # the operator still learns which entry to add
    assert names[-1] not in failure.message
    assert "75 more" in failure.message
    assert len(failure.message) < 2048


def test_a_certificate_with_one_very_long_name_gets_a_short_refusal(
    start_tls: StartTls, pki: Pki
) -> None:
    server = start_tls(mutual=True)
    name = "x" * 4000 + ".example"
    client = _issue(pki.ca, x509.SubjectAlternativeName([x509.DNSName(name)]))

    failure = _get_status_as(server, client)

    assert (failure.code, failure.reason) == UNKNOWN_CALLER, failure
    assert len(failure.message) < 2048
