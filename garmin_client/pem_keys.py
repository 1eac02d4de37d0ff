"""A PEM private key as gRPC's TLS takes it, and whether it is a certificate's: the service's
server key and the worker's client key are read by the same rules."""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)


class EncryptedKey(ValueError):
    """The key needs a passphrase, which gRPC cannot give."""


class NoPrivateKey(ValueError):
    """The bytes hold no readable PEM private key (the library's message, which describes key
    bytes, is not kept)."""


def unencrypted_private_key(data: bytes) -> PrivateKeyTypes:
    """The PEM private key in `data`; EncryptedKey or NoPrivateKey otherwise."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise EncryptedKey from None
    except (ValueError, UnsupportedAlgorithm):
        raise NoPrivateKey from None


def public_der(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    """A public key as DER SubjectPublicKeyInfo: equal for a private key's and its
    certificate's."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
