"""A client certificate with a negative serial and an unreadable SAN answers UNAUTHENTICATED,
as one with a positive serial does (README "TLS and mutual TLS"). cryptography parses such a
certificate (with a deprecation warning) and the handshake lets it through; the warning that
names its serial raised OverflowError (int.to_bytes of a negative number), so the call
answered INTERNAL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fixtures.certificates import Authority, Issued, _key_pem
from tests.service import test_tls
from tests.service.test_tls import Pki, StartTls
from tests.service.test_tls_odd_client_certificates import (
    UNKNOWN_CALLER,
    _der_length,
    _get_status_as,
    _raw_dns_names,
)

backend, pki, start_tls = test_tls.backend, test_tls.pki, test_tls.start_tls

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning"),
]

POSITIVE_SERIAL = 0x7A11223344556677


def _tlv(data: bytes, at: int) -> tuple[int, int]:
    """(start of the value, end of the element) of the DER element at `at`."""
    first = data[at + 1]
    if first < 0x80:
        return at + 2, at + 2 + first
    count = first & 0x7F
    length = int.from_bytes(data[at + 2 : at + 2 + count], "big")
    return at + 2 + count, at + 2 + count + length


def _negative_serial_certificate(ca: Authority) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd-client-cn")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(POSITIVE_SERIAL)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_raw_dns_names([b"bad-\xff-name.example"]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    der = built.public_bytes(serialization.Encoding.DER)
    body, _ = _tlv(der, 0)
    _, tbs_end = _tlv(der, body)
    tbs = der[body:tbs_end]
    _, algorithm_end = _tlv(der, tbs_end)
    algorithm = der[tbs_end:algorithm_end]
    serial = b"\x02\x08" + POSITIVE_SERIAL.to_bytes(8, "big")
    assert tbs.count(serial) == 1
    tbs = tbs.replace(serial, b"\x02\x08\xfa" + serial[3:])  # the same length, now negative
    signature = ca.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    bits = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    inner = tbs + algorithm + bits
    certificate = x509.load_der_x509_certificate(b"\x30" + _der_length(len(inner)) + inner)
    assert certificate.serial_number < 0
    return Issued(
        certificate.public_bytes(serialization.Encoding.PEM),
        _key_pem(key),
        certificate.serial_number,
    )


def test_an_unreadable_san_on_a_negative_serial_is_an_unknown_caller(
    start_tls: StartTls, pki: Pki
) -> None:
    server = start_tls(mutual=True)
    failure = _get_status_as(server, _negative_serial_certificate(pki.ca))
    assert (failure.code, failure.reason) == UNKNOWN_CALLER, failure
