"""TLS and mutual TLS for the gRPC port, with certificates reloaded while the server runs.

cert-manager (or any other rotation) replaces the certificate and key files in place. The
server's credentials come from `grpc.dynamic_ssl_server_credentials`, whose fetcher gRPC calls
before every new handshake: `CertificateReloader.fetch` looks at the files at most every
`TlsSettings.reload_check_seconds`, and hands gRPC a new configuration only when they changed
and form a valid pair. A half-written or mismatched pair keeps the configuration in use and
logs an error; the next change is looked at again. Established connections keep the
certificate they shook hands with.

Messages name files and variables, certificate subjects, serials and dates: never key bytes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from auth_service.config import PREFIX, TlsSettings
from garmin_client.env import ConfigError
from garmin_client.pem_keys import EncryptedKey, NoPrivateKey, public_der, unencrypted_private_key

log = logging.getLogger(__name__)

CERT_VARIABLE = PREFIX + "TLS_CERT"
KEY_VARIABLE = PREFIX + "TLS_KEY"
CLIENT_CA_VARIABLE = PREFIX + "TLS_CLIENT_CA"

# Properties of grpc's auth context for a verified peer certificate (mutual TLS only).
PEM_CERT_PROPERTY = "x509_pem_cert"
COMMON_NAME_PROPERTY = "x509_common_name"


class TlsFilesError(ConfigError):
    """A TLS file is missing, unreadable, malformed, or the key does not fit the certificate."""


@dataclass(frozen=True, repr=False)
class CertificateMaterial:
    """The bytes gRPC needs, and what an operator may read about them."""

    key_pem: bytes
    chain_pem: bytes
    client_ca_pem: bytes | None
    subject: str
    serial: int
    not_before: datetime
    not_after: datetime
    client_ca_subjects: tuple[str, ...]

    def __repr__(self) -> str:
        return f"CertificateMaterial(subject={self.subject!r}, serial={self.serial:x})"

    @property
    def fingerprint(self) -> bytes:
        """Identifies the content (a `touch` of the files is not a rotation)."""
        digest = hashlib.sha256(self.key_pem)
        digest.update(self.chain_pem)
        digest.update(self.client_ca_pem or b"")
        return digest.digest()

    def describe(self) -> str:
        return (
            f"{self.subject}, serial {self.serial:x}, valid until "
            f"{self.not_after.isoformat(timespec='seconds')}"
        )


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(variable, f"cannot read {path} ({exc.strerror})") from None


def _certificates(data: bytes, path: Path, variable: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TlsFilesError(variable, f"{path} holds no PEM certificate")
    return certificates


def _private_key(data: bytes, path: Path) -> PrivateKeyTypes:
    try:
        return unencrypted_private_key(data)
    except EncryptedKey:
        # gRPC cannot take a passphrase, so an encrypted key can never be served.
        raise TlsFilesError(KEY_VARIABLE, f"{path} is encrypted; give an unencrypted key") from None
    except NoPrivateKey:
        raise TlsFilesError(KEY_VARIABLE, f"{path} holds no readable PEM private key") from None


# The keys gRPC's TLS clients (the worker's, grpcio's: BoringSSL) verify a server by: ECDSA on
# P-256 or P-384, RSA. An Ed25519 or P-521 certificate loads and serves, and then every client
# handshake fails (NO_COMMON_SIGNATURE_ALGORITHMS) while the plaintext probes say Ready.
_SERVABLE_CURVES = frozenset({"secp256r1", "secp384r1"})
_MIN_RSA_BITS = 2048


def _check_servable(key: PrivateKeyTypes, path: Path) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _SERVABLE_CURVES:
        return
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= _MIN_RSA_BITS:
        return
    raise TlsFilesError(
        KEY_VARIABLE,
        f"{path} holds a key gRPC's TLS clients cannot verify or that is too weak; use ECDSA "
        f"P-256 or P-384, or RSA of {_MIN_RSA_BITS} bits or more",
    )


def subject_name(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "<empty subject>"


def load_material(settings: TlsSettings) -> CertificateMaterial:
    """Read and check the files: PEM certificate chain, unencrypted key that fits the chain's
    first certificate, and (mutual TLS) the client CA bundle. Raises TlsFilesError."""
    chain_pem = _read(settings.cert_file, CERT_VARIABLE)
    key_pem = _read(settings.key_file, KEY_VARIABLE)
    chain = _certificates(chain_pem, settings.cert_file, CERT_VARIABLE)
    key = _private_key(key_pem, settings.key_file)
    _check_servable(key, settings.key_file)
    leaf = chain[0]
    if public_der(key.public_key()) != public_der(leaf.public_key()):
        raise TlsFilesError(
            KEY_VARIABLE,
            f"{settings.key_file} does not belong to the certificate in {settings.cert_file}",
        )
    client_ca_pem: bytes | None = None
    client_ca_subjects: tuple[str, ...] = ()
    if settings.client_ca_file is not None:
        client_ca_pem = _read(settings.client_ca_file, CLIENT_CA_VARIABLE)
        authorities = _certificates(client_ca_pem, settings.client_ca_file, CLIENT_CA_VARIABLE)
        client_ca_subjects = tuple(subject_name(ca) for ca in authorities)
    return CertificateMaterial(
        key_pem=key_pem,
        chain_pem=chain_pem,
        client_ca_pem=client_ca_pem,
        subject=subject_name(leaf),
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        client_ca_subjects=client_ca_subjects,
    )


def _configuration(material: CertificateMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key_pem, material.chain_pem)], root_certificates=material.client_ca_pem
    )


def _warn_if_outside_validity(material: CertificateMaterial) -> None:
    now = datetime.now(UTC)
    if not material.not_before <= now <= material.not_after:
        log.warning("TLS certificate is not valid now: %s", material.describe())


_Signature = tuple[tuple[int, int, int], ...]


class CertificateReloader:
    """The server's TLS credentials, re-read from the files when they change."""

    def __init__(
        self, settings: TlsSettings, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._signature = self._stat()
        # Fails start-up (TlsFilesError) when the files are wrong from the start.
        self._material = load_material(settings)
        _warn_if_outside_validity(self._material)
        self._checked_at = monotonic()

    @property
    def material(self) -> CertificateMaterial:
        return self._material

    @property
    def mutual(self) -> bool:
        return self._settings.mutual

    def credentials(self) -> grpc.ServerCredentials:
        # The fetcher may answer None ("keep the current configuration"); grpc-stubs types
        # its result as never None.
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._material),
            fetcher,
            require_client_authentication=self._settings.mutual,
        )

    def _paths(self) -> list[Path]:
        paths = [self._settings.cert_file, self._settings.key_file]
        if self._settings.client_ca_file is not None:
            paths.append(self._settings.client_ca_file)
        return paths

    def _stat(self) -> _Signature:
        signature: list[tuple[int, int, int]] = []
        for path in self._paths():
            try:
                # stat() follows symlinks: a Kubernetes secret volume swaps its ..data link,
                # so the inode changes even when size and time would not.
                stat = path.stat()
                signature.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
            except OSError:
                signature.append((-1, -1, -1))
        return tuple(signature)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate_configuration_fetcher: a new configuration, or None to keep
        the current one. Called on gRPC's threads before each handshake: never raises."""
        try:
            return self._fetch()
        # An exception escaping into gRPC's core would fail the handshake of whoever is
        # connecting; keeping the current certificate is always the better answer.
        except Exception:
            log.exception("TLS certificate check failed; keeping the certificate in use")
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        now = self._monotonic()
        with self._lock:
            if now - self._checked_at < self._settings.reload_check_seconds:
                return None
            self._checked_at = now
            signature = self._stat()
            if signature == self._signature:
                return None
            # Remember what was looked at even if it is broken: a broken pair is reported
            # once, and looked at again as soon as any of the files changes again.
            self._signature = signature
            try:
                material = load_material(self._settings)
            except TlsFilesError as exc:
                log.error(  # noqa: TRY400 - the message says it all; a traceback adds nothing
                    "TLS files changed but were not loaded (%s); keeping the certificate in "
                    "use (%s)",
                    exc,
                    self._material.describe(),
                )
                return None
            if material.fingerprint == self._material.fingerprint:
                return None
            self._material = material
            _warn_if_outside_validity(material)
            log.info("TLS certificate reloaded: %s", material.describe())
            return _configuration(material)


@functools.lru_cache(maxsize=256)
def _identities_of_pem(pem: bytes) -> tuple[str, ...]:
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return ()
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        san = None
    except ValueError:
        # The CA signed an extension cryptography cannot parse (a dNSName that is not even
        # UTF-8): its names cannot be known, and the CN must not stand in for them (below),
        # so the certificate names no caller. The serial lets the operator find it; nothing
        # else from it is quoted. Logged once per certificate: the parse is cached.
        log.warning(
            "client certificate serial %s has unreadable extensions; it names no caller",
            _serial_text(certificate.serial_number),
        )
        return ()
    if san is not None and len(san.value) > 0:
        # RFC 6125: a certificate with subject alternative names is identified by them
        # alone. Its CN is often whatever the issuing tool put there (a pod name), and must
        # not make it match a callers entry meant for another client.
        return tuple(san.value.get_values_for_type(x509.DNSName))
    return tuple(
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    )


def certificate_identities(auth_context: object) -> tuple[str, ...]:
    """The verified client certificate's DNS SANs, or its subject CN when it has no SANs,
    from grpc's auth context.

    Only DNS SANs count (not URI, e-mail or IP SANs), so the PEM is parsed rather than
    trusting grpc's flattened `x509_subject_alternative_name`; parsing is cached per
    certificate. Empty when the peer presented no certificate.
    """
    if not isinstance(auth_context, dict):
        return ()
    pem_values = auth_context.get(PEM_CERT_PROPERTY) or ()
    for pem in pem_values:
        return _identities_of_pem(bytes(pem))
    # No PEM (not seen with gRPC's own TLS): fall back on the common name alone.
    return tuple(
        value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
        for value in auth_context.get(COMMON_NAME_PROPERTY) or ()
    )


def _serial_text(serial: int) -> str:
    """A certificate serial as openssl prints it (hex bytes joined by colons). Unbroken, its
    40 hex digits would read as a token to the log's redaction and be masked."""
    sign, magnitude = ("-", -serial) if serial < 0 else ("", serial)  # RFC 5280 forbids it
    raw = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "big")
    return sign + ":".join(f"{byte:02x}" for byte in raw)
