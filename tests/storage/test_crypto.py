"""Encryption at rest (auth_service.crypto): AES-256-GCM blobs bound to their row."""

from __future__ import annotations

import base64
import os
import secrets

import pytest

from auth_service.crypto import (
    DecryptionError,
    Keyring,
    KeyringError,
    challenge_aad,
    session_aad,
)

PLAINTEXT = b'{"oauth2":{"access_token":"secret-access-token"}}'


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_round_trip(keyring: Keyring) -> None:
    blob = keyring.encrypt(PLAINTEXT, session_aad("alice"))

    assert keyring.decrypt(blob, session_aad("alice")) == PLAINTEXT
    assert PLAINTEXT not in blob
    assert Keyring.key_id_of(blob) == keyring.primary_kid


def test_each_encryption_uses_a_fresh_nonce(keyring: Keyring) -> None:
    aad = session_aad("alice")
    assert keyring.encrypt(PLAINTEXT, aad) != keyring.encrypt(PLAINTEXT, aad)


def test_blob_of_another_row_fails(keyring: Keyring) -> None:
    blob = keyring.encrypt(PLAINTEXT, session_aad("alice"))

    with pytest.raises(DecryptionError):
        keyring.decrypt(blob, session_aad("mallory"))


def test_blob_of_another_column_fails(keyring: Keyring) -> None:
    blob = keyring.encrypt(PLAINTEXT, session_aad("alice"))

    with pytest.raises(DecryptionError):
        keyring.decrypt(blob, challenge_aad("0" * 64, "alice"))


def test_challenge_blob_is_bound_to_its_challenge(keyring: Keyring) -> None:
    blob = keyring.encrypt(PLAINTEXT, challenge_aad("a" * 64, "alice"))

    assert keyring.decrypt(blob, challenge_aad("a" * 64, "alice")) == PLAINTEXT
    with pytest.raises(DecryptionError):
        keyring.decrypt(blob, challenge_aad("b" * 64, "alice"))


def test_unknown_key_id_fails(keyring: Keyring) -> None:
    other = Keyring.parse(Keyring.generate_key_value("elsewhere"))
    blob = other.encrypt(PLAINTEXT, session_aad("alice"))

    with pytest.raises(DecryptionError, match="unknown key id"):
        keyring.decrypt(blob, session_aad("alice"))


def test_same_key_id_with_another_key_fails(keyring: Keyring) -> None:
    impostor = Keyring(((keyring.primary_kid, os.urandom(32)),))
    blob = impostor.encrypt(PLAINTEXT, session_aad("alice"))

    with pytest.raises(DecryptionError):
        keyring.decrypt(blob, session_aad("alice"))


@pytest.mark.parametrize(
    "offset", [0, 1, 2, -40, -1], ids=["version", "kid-len", "kid", "nonce-or-body", "tag"]
)
def test_tampering_fails(keyring: Keyring, offset: int) -> None:
    blob = bytearray(keyring.encrypt(PLAINTEXT, session_aad("alice")))
    blob[offset] ^= 0x01

    with pytest.raises(DecryptionError):
        keyring.decrypt(bytes(blob), session_aad("alice"))


@pytest.mark.parametrize("cut", [1, 10, 30])
def test_truncated_blob_fails(keyring: Keyring, cut: int) -> None:
    blob = keyring.encrypt(PLAINTEXT, session_aad("alice"))

    with pytest.raises(DecryptionError):
        keyring.decrypt(blob[:cut], session_aad("alice"))


def test_old_keys_still_decrypt_and_the_first_key_encrypts() -> None:
    old = Keyring.parse(Keyring.generate_key_value("old"))
    new_entry = Keyring.generate_key_value("new")
    old_entry = f"old:{base64.b64encode(dict(old.keys)['old']).decode()}"
    rotated = Keyring.parse(f"{new_entry},{old_entry}")
    blob = old.encrypt(PLAINTEXT, session_aad("alice"))

    assert rotated.decrypt(blob, session_aad("alice")) == PLAINTEXT
    assert Keyring.key_id_of(rotated.encrypt(PLAINTEXT, b"")) == "new"


def test_repr_shows_key_ids_only() -> None:
    key = _key()
    keyring = Keyring.parse(f"primary:{key}")

    assert key not in repr(keyring)
    assert "primary" in repr(keyring)


def test_parse_accepts_spaces_and_several_keys() -> None:
    keyring = Keyring.parse(f" a:{_key()} , b:{_key()} ,")

    assert [kid for kid, _ in keyring.keys] == ["a", "b"]
    assert keyring.primary_kid == "a"


MALFORMED = {
    "empty": "",
    "no-kid": "{key}",
    "empty-kid": ":{key}",
    "short-key": "primary:{short}",
    "long-key": "primary:{long}",
    "bad-base64": "primary:{key}!",
    "bad-kid": "bad kid:{key}",
    "duplicate-kid": "primary:{key},primary:{key}",
    "second-entry-bad": "primary:{key},{key}",
}


@pytest.mark.parametrize("template", MALFORMED.values(), ids=MALFORMED.keys())
def test_parse_errors_name_no_key_material(template: str) -> None:
    key = _key()
    value = template.format(
        key=key,
        short=base64.b64encode(os.urandom(16)).decode(),
        long=base64.b64encode(os.urandom(48)).decode(),
    )

    with pytest.raises(KeyringError) as raised:
        Keyring.parse(value)

    _assert_no_key_material(str(raised.value), value)


def test_parse_refuses_a_key_id_ending_in_a_line_break() -> None:
    """Before, the key id pattern ended in `$`, which also matches before a final newline:
    "k1\\n" was accepted, written into every blob header, and broke check-config's one line
    per check. Now the whole key id must be 1-64 characters of A-Z a-z 0-9 . _ -."""
    with pytest.raises(KeyringError, match="entry 1: the key id must be"):
        Keyring.parse(f"k1\n:{_key()}")


def test_a_keyring_refuses_a_key_id_ending_in_a_line_break() -> None:
    """The same pattern guards a Keyring built from its entries (before: accepted)."""
    with pytest.raises(KeyringError, match="entry 1: the key id must be"):
        Keyring((("k1\n", os.urandom(32)),))


# Mistakes where the key lands in the key-id position: the error must name the entry's
# position, never echo the malformed key id (which is the key).
# A key in URL-safe base64 or hex fits the key id's alphabet, so only the error names it.
SWAPPED = {
    "key-then-kid": "{key}:primary",
    "key-then-colon": "{key}:",
    "urlsafe-key-then-kid": "{urlsafe}:primary",
    "hex-key-then-kid": "{hex}:primary",
}


@pytest.mark.parametrize("template", SWAPPED.values(), ids=SWAPPED.keys())
def test_parse_errors_name_no_key_material_when_key_and_kid_are_swapped(template: str) -> None:
    value = template.format(key=_key(), urlsafe=secrets.token_urlsafe(32), hex=os.urandom(32).hex())

    with pytest.raises(KeyringError) as raised:
        Keyring.parse(value)

    _assert_no_key_material(str(raised.value), value)


def _assert_no_key_material(message: str, value: str) -> None:
    for entry in value.split(","):
        for raw_part in entry.split(":"):
            part = raw_part.strip()
            # Key ids are not secret; anything that looks like base64 key material is.
            if len(part) >= 16:
                assert part not in message
                assert part[:12] not in message


def test_a_key_pasted_as_the_primary_key_id_is_not_echoed() -> None:
    pasted = secrets.token_urlsafe(32)

    with pytest.raises(KeyringError) as raised:
        Keyring.parse(f"primary:{_key()}", primary=pasted)

    assert pasted[:12] not in str(raised.value)
