"""Encryption at rest: AES-256-GCM with a key ring.

Blob layout: format (1 byte) | len(kid) (1 byte) | kid (ASCII) | nonce (12 bytes) |
ciphertext+tag. The associated data binds a blob to its row and column, so a blob copied into
another user's row fails to decrypt. A stored session's blob of format 2 also binds the
row's session_version (issue 14): a database writer who puts an older ciphertext of the same
row back, after the version moved on, gets a blob that fails to decrypt, not an old session.
Format 1 (written before) binds no version; it stays readable, and rotate-keys (or the next
write of the row) replaces it by a format-2 blob.

Knowing a key and encrypting with it are separate (issue 14): every key of the ring decrypts,
and only the primary one encrypts (GARMIN_AUTH_ENCRYPTION_PRIMARY_KEY_ID; the first listed key
when unset). So a rolling update can first teach every replica a new key, and only then make
it primary: no replica ever meets a blob under a key it does not know (README, "Rotating the
encryption key").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The blob formats: 1 binds row and column; 2 also binds the session version (sessions).
BLOB_VERSION = 1
VERSION_BOUND_BLOB = 2
_BLOB_FORMATS = frozenset({BLOB_VERSION, VERSION_BOUND_BLOB})
NONCE_BYTES = 12
KEY_BYTES = 32
_HEADER_BYTES = 2  # version, kid length
_TAG_BYTES = 16
_MAX_KID_BYTES = 64
# The longest blob header: format, key id length and the longest key id.
MAX_HEADER_BYTES = _HEADER_BYTES + _MAX_KID_BYTES
# Matched with fullmatch: `$` also matches before a final newline, and a key id "k1\n" would
# be written into every blob header and break check-config's one line per check.
_KID_PATTERN = re.compile(rf"[A-Za-z0-9._-]{{1,{_MAX_KID_BYTES}}}")


class KeyringError(ValueError):
    """The key configuration is malformed. The message never contains key material."""


class DecryptionError(Exception):
    """A blob failed to decrypt: unknown key id, wrong row, or tampering."""


@dataclass(frozen=True, repr=False)
class Keyring:
    """AES-256-GCM keys that all decrypt; `primary` (default: the first) encrypts."""

    keys: tuple[tuple[str, bytes], ...]
    primary: str | None = None

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError("no key given")
        kids = [kid for kid, _ in self.keys]
        if len(set(kids)) != len(kids):
            raise KeyringError("a key id appears twice")
        if self.primary is not None and self.primary not in kids:
            # Not echoed either: a key pasted into the primary id's place would be printed.
            raise KeyringError("the primary key id names none of the keys")
        for position, (kid, key) in enumerate(self.keys, start=1):
            # A malformed key id may be a key pasted in the wrong place: name only its position.
            if not _KID_PATTERN.fullmatch(kid):
                raise KeyringError(
                    f"entry {position}: the key id must be 1-64 characters of A-Z a-z 0-9 . _ -"
                )
            if len(key) != KEY_BYTES:
                raise KeyringError(f"entry {position}: the key must decode to {KEY_BYTES} bytes")
        # One key under two ids: a rotation "to" the second would re-seal every secret under
        # the same bytes and report success, protecting nothing from whoever holds the first.
        if len({key for _, key in self.keys}) != len(self.keys):
            raise KeyringError("two key ids name the same key: give each id a key of its own")

    def __repr__(self) -> str:
        return f"Keyring(kids={[kid for kid, _ in self.keys]}, primary={self.primary_kid!r})"

    @classmethod
    def parse(cls, value: str, primary: str | None = None) -> Keyring:
        """Parse `kid:base64,kid:base64,...`; `primary` names the key that encrypts (None:
        the first)."""
        entries = [part.strip() for part in value.split(",") if part.strip()]
        if not entries:
            raise KeyringError("expected kid:base64-of-32-bytes[,kid:base64...]")
        keys: list[tuple[str, bytes]] = []
        for position, entry in enumerate(entries, start=1):
            kid, sep, encoded = entry.partition(":")
            if not sep or not kid:
                raise KeyringError(f"entry {position} is not kid:base64-of-32-bytes")
            if not _KID_PATTERN.fullmatch(kid):
                raise KeyringError(
                    f"entry {position}: the key id must be 1-64 characters of A-Z a-z 0-9 . _ -"
                )
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                # By position: a key in URL-safe base64 or hex, swapped with its id, fits the
                # id's alphabet, so the "id" may be the key itself.
                raise KeyringError(f"entry {position}: the key is not valid base64") from None
            keys.append((kid, key))
        return cls(tuple(keys), primary)

    @staticmethod
    def generate_key_value(kid: str) -> str:
        """A fresh `kid:base64` entry (for development set-ups and rotation)."""
        return f"{kid}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"

    @property
    def primary_kid(self) -> str:
        return self.primary if self.primary is not None else self.keys[0][0]

    def _ordered(self) -> list[tuple[str, bytes]]:
        """The keys, primary first."""
        return sorted(self.keys, key=lambda entry: entry[0] != self.primary_kid)

    def derived_keys(self, label: str) -> tuple[bytes, ...]:
        """One key per ring entry for another purpose than encryption, primary first.

        Each is HMAC-SHA256(entry, label): the same on every replica, as secret as the ring,
        and never the encryption key itself. Keeping every entry lets a verifier accept what
        was signed before a rotation.
        """
        return tuple(
            hmac.new(key, label.encode(), hashlib.sha256).digest() for _, key in self._ordered()
        )

    def encrypt(
        self, plaintext: bytes, associated_data: bytes, *, blob_format: int = BLOB_VERSION
    ) -> bytes:
        """Seal under the primary key; `blob_format` records which associated data the
        caller bound (VERSION_BOUND_BLOB: one that names the session version)."""
        kid, key = self._ordered()[0]
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plaintext, associated_data)
        return blob_header(kid, blob_format) + nonce + sealed

    def decrypt(self, blob: bytes, associated_data: bytes) -> bytes:
        kid = self.key_id_of(blob)
        key = dict(self.keys).get(kid)
        if key is None:
            raise DecryptionError(f"blob was encrypted under unknown key id {kid!r}")
        start = _HEADER_BYTES + len(kid)
        nonce, sealed = blob[start : start + NONCE_BYTES], blob[start + NONCE_BYTES :]
        try:
            return AESGCM(key).decrypt(nonce, sealed, associated_data)
        except InvalidTag:
            raise DecryptionError("blob failed authentication (wrong row or tampered)") from None

    @staticmethod
    def key_id_of(blob: bytes) -> str:
        if len(blob) < _HEADER_BYTES or blob[0] not in _BLOB_FORMATS:
            raise DecryptionError("not an encrypted blob of a known version")
        kid_len = blob[1]
        if len(blob) < _HEADER_BYTES + kid_len + NONCE_BYTES + _TAG_BYTES:
            raise DecryptionError("blob is truncated")
        return blob[_HEADER_BYTES : _HEADER_BYTES + kid_len].decode("ascii", errors="replace")


def sealed_key_id(head: bytes, blob_length: int) -> str | None:
    """The key id in the header of a blob `blob_length` bytes long that begins with `head`
    (its first MAX_HEADER_BYTES bytes, or all of it); None when it has no header this module
    writes: an unknown format, a key id no key ring accepts, or too few bytes after it for a
    nonce and a tag. Only a blob with a header can be under a key that is not configured;
    one without was altered, and no key opens it (check-config)."""
    if len(head) < _HEADER_BYTES or head[0] not in _BLOB_FORMATS:
        return None
    end_of_kid = _HEADER_BYTES + head[1]
    if len(head) < end_of_kid or blob_length < end_of_kid + NONCE_BYTES + _TAG_BYTES:
        return None
    kid = head[_HEADER_BYTES:end_of_kid].decode("ascii", errors="replace")
    return kid if _KID_PATTERN.fullmatch(kid) else None


def blob_header(kid: str, blob_format: int = BLOB_VERSION) -> bytes:
    """How every blob of `blob_format` encrypted under `kid` begins (stored blobs can be
    matched on it; from the second byte on, it is the same for every format)."""
    kid_bytes = kid.encode("ascii")
    return bytes([blob_format, len(kid_bytes)]) + kid_bytes


def blob_format(blob: bytes) -> int:
    """The format a blob was written in (DecryptionError for none we know)."""
    if not blob or blob[0] not in _BLOB_FORMATS:
        raise DecryptionError("not an encrypted blob of a known version")
    return blob[0]


def session_aad(user_id: str, session_version: int | None = None) -> bytes:
    """Associated data of a user's stored session: bound to the session version it is
    stored with (VERSION_BOUND_BLOB), or, for blobs written before (None), not."""
    aad = b"garmin_authentication_state.session_ciphertext\x00" + user_id.encode()
    if session_version is None:
        return aad
    return aad + b"\x00session_version=" + str(session_version).encode()


def stored_session_aad(user_id: str, session_version: int, blob: bytes) -> bytes:
    """The associated data a stored session blob opens with: its format says whether it
    bound the row's version."""
    if blob_format(blob) == VERSION_BOUND_BLOB:
        return session_aad(user_id, session_version)
    return session_aad(user_id)


def challenge_aad(challenge_id_sha256: str, user_id: str) -> bytes:
    """Associated data of a pending MFA challenge."""
    return (
        b"garmin_mfa_challenge.pending_ciphertext\x00"
        + challenge_id_sha256.encode()
        + b"\x00"
        + user_id.encode()
    )
