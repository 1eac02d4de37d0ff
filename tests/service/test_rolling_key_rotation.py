"""Key rotation as a rolling update (issue 14, finding 7): replicas on different key
configurations share one database through add -> roll -> promote -> re-encrypt -> retire,
and none ever meets a blob under a key it does not know.

The configurations are read from the environment as the service reads them (load_keyring),
so GARMIN_AUTH_ENCRYPTION_PRIMARY_KEY_ID is what makes a replica encrypt with the new key."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import text

from auth_service.config import load_keyring
from auth_service.crypto import Keyring
from auth_service.storage.database import create_engine_for
from auth_service.storage.key_rotation import rotate_keys
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.env import ConfigError
from garmin_emulator import GarminEmulator
from tests.audit import connect
from tests.fixtures.servers import Replica, ServiceFactory

K1 = Keyring.generate_key_value("k1")
K2 = Keyring.generate_key_value("k2")


def configured_keyring(keys: str, primary: str | None = None) -> Keyring:
    """The keyring a replica reads from GARMIN_AUTH_ENCRYPTION_KEYS (and the primary id)."""
    env = {"GARMIN_AUTH_ENCRYPTION_KEYS": keys}
    if primary is not None:
        env["GARMIN_AUTH_ENCRYPTION_PRIMARY_KEY_ID"] = primary
    return load_keyring(env)


def _stored_key_ids(database_url: str) -> Counter[str]:
    """How many stored sessions each key id encrypted (read from the blob headers)."""
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as connection:
            blobs = connection.execute(
                text(
                    "SELECT session_ciphertext FROM garmin_authentication_state "
                    "WHERE session_ciphertext IS NOT NULL"
                )
            ).scalars()
            return Counter(Keyring.key_id_of(bytes(blob)) for blob in blobs)
    finally:
        engine.dispose()


def _reads_every_session(replica: Replica, users: list[str]) -> None:
    """A lease opens the stored session (its tokens are decrypted to hand out)."""
    for user in users:
        granted = replica.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id=user, holder="w"), role="worker"
        )
        assert granted.access.token
        replica.call(
            "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=granted.lease.lease_id), role="worker"
        )


def test_add_roll_promote_reencrypt_retire(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    old = service_factory.start(keyring=configured_keyring(K1))
    connect(old, garmin, "before")

    # Add: a new replica knows k2, but k1 still encrypts (no primary id set: the first key).
    added = service_factory.start(keyring=configured_keyring(f"{K1},{K2}"))
    connect(added, garmin, "during-add")
    assert _stored_key_ids(database_url) == Counter({"k1": 2})
    _reads_every_session(old, ["before", "during-add"])

    # Promote, once every replica knows k2 (the old one is gone): k2 encrypts.
    old.stop()
    service_factory.replicas.remove(old)
    promoted = service_factory.start(keyring=configured_keyring(f"{K1},{K2}", primary="k2"))
    connect(promoted, garmin, "after-promote")
    assert _stored_key_ids(database_url) == Counter({"k1": 2, "k2": 1})
    # Both configurations read each other's writes.
    _reads_every_session(added, ["before", "during-add", "after-promote"])
    _reads_every_session(promoted, ["before", "during-add", "after-promote"])

    # Re-encrypt (rotate-keys under the promoted configuration), then retire k1.
    engine = create_engine_for(database_url)
    try:
        report = rotate_keys(engine, configured_keyring(f"{K1},{K2}", primary="k2"))
    finally:
        engine.dispose()
    assert report.complete
    assert _stored_key_ids(database_url) == Counter({"k2": 3})
    retired = service_factory.start(keyring=configured_keyring(K2))
    _reads_every_session(retired, ["before", "during-add", "after-promote"])


def test_the_primary_key_id_must_name_a_known_key() -> None:
    with pytest.raises(ConfigError, match="GARMIN_AUTH_ENCRYPTION_PRIMARY_KEY_ID"):
        configured_keyring(K1, primary="k2")


def test_without_a_primary_key_id_the_first_key_encrypts_as_before() -> None:
    assert configured_keyring(f"{K2},{K1}").primary_kid == "k2"
    assert configured_keyring(f"{K1},{K2}").primary_kid == "k1"
    assert configured_keyring(f"{K1},{K2}", primary="k2").primary_kid == "k2"
