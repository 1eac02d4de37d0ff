"""One key's bytes listed under two key ids are refused, as configuration.

Before, `GARMIN_AUTH_ENCRYPTION_KEYS=old:K,new:K` parsed (Keyring refused a repeated key *id*,
never repeated key *bytes*), `check-config` reported the keys fine, and `rotate-keys` with
`new` promoted "re-encrypted" every session and exited 0, the README's signal that every
stored secret is under the new key and the old one can be retired. Nothing had changed
cryptographically: the key material of `old` still opened every session, so a rotation made
because `old` leaked (or an entry copy-pasted under a new id) protected nothing.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from auth_service.config import load_keyring
from auth_service.crypto import Keyring
from auth_service.storage.database import create_engine_for
from garmin_client.env import ConfigError
from garmin_emulator import GarminEmulator
from tests.audit import connect
from tests.fixtures.servers import ServiceFactory
from tests.service.test_rolling_key_rotation import configured_keyring

CLI = str(Path(sys.executable).parent / "garmin-auth-service")
KEY = base64.b64encode(os.urandom(32)).decode()
OLD = f"old:{KEY}"
# The operator's "new" key: the same bytes under a new id.
NEW_SAME_BYTES = f"new:{KEY}"


def test_the_same_key_bytes_under_two_key_ids_are_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        load_keyring(
            {
                "GARMIN_AUTH_ENCRYPTION_KEYS": f"{OLD},{NEW_SAME_BYTES}",
                "GARMIN_AUTH_ENCRYPTION_PRIMARY_KEY_ID": "new",
            }
        )
    assert refused.value.variable == "GARMIN_AUTH_ENCRYPTION_KEYS"


def _session_row(database_url: str, user_id: str) -> tuple[bytes, int]:
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as connection:
            blob, version = connection.execute(
                text(
                    "SELECT session_ciphertext, session_version FROM garmin_authentication_state "
                    "WHERE user_id = :user"
                ),
                {"user": user_id},
            ).one()
            return bytes(blob), int(version)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_rotate_keys_to_the_same_bytes_under_a_new_id_does_not_report_success(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    replica = service_factory.start(keyring=configured_keyring(OLD))
    connect(replica, garmin, "ann")

    # README "Rotating the encryption key", steps 1-4, with "new" holding old's bytes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}
    env.update(
        GARMIN_AUTH_DATABASE_URL=database_url,
        GARMIN_AUTH_ENCRYPTION_KEYS=f"{OLD},{NEW_SAME_BYTES}",
        GARMIN_AUTH_ENCRYPTION_PRIMARY_KEY_ID="new",
    )
    done = subprocess.run(
        [CLI, "rotate-keys"], env=env, capture_output=True, text=True, timeout=120, check=False
    )

    # Refused as configuration, before any row is touched.
    assert done.returncode == 2, done.stdout + done.stderr
    assert "GARMIN_AUTH_ENCRYPTION_KEYS" in done.stderr
    assert "two key ids name the same key" in done.stderr
    assert KEY not in done.stdout + done.stderr
    blob, _version = _session_row(database_url, "ann")
    assert Keyring.key_id_of(blob) == "old"
