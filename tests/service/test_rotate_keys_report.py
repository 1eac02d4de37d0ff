"""`rotate-keys` says what it did in lines an operator reads: what it re-encrypted under which
key, each user whose secret still needs an old key by name, and whether it is done.

Before, it printed the Python repr of its report
(`RotationReport(primary_kid='k2', primary_checked=True, sessions_rotated=1, ...)`)."""

from __future__ import annotations

import os
import subprocess

from sqlalchemy import text

from auth_service.storage.database import create_engine_for
from garmin_emulator import GarminEmulator
from tests.audit import connect
from tests.fixtures.servers import ServiceFactory
from tests.service.test_rolling_key_rotation import configured_keyring
from tests.service.test_rotate_keys_wrong_key import CLI, K1, K2


def _rotate(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}
    env.update(
        GARMIN_AUTH_DATABASE_URL=database_url,
        GARMIN_AUTH_ENCRYPTION_KEYS=f"{K1},{K2}",
        GARMIN_AUTH_ENCRYPTION_PRIMARY_KEY_ID="k2",
    )
    return subprocess.run(
        [CLI, "rotate-keys"], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _damage(database_url: str, user_id: str) -> None:
    """A blob no key opens: its last byte (inside the GCM tag) flipped."""
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as connection:
            blob = connection.execute(
                text(
                    "SELECT session_ciphertext FROM garmin_authentication_state WHERE user_id = :u"
                ),
                {"u": user_id},
            ).scalar_one()
            damaged = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
            connection.execute(
                text(
                    "UPDATE garmin_authentication_state SET session_ciphertext = :b "
                    "WHERE user_id = :u"
                ),
                {"b": damaged, "u": user_id},
            )
    finally:
        engine.dispose()


def test_rotate_keys_reports_in_plain_lines(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    old = service_factory.start(keyring=configured_keyring(K1))
    for user_id in ("ann", "bob", "cat"):
        connect(old, garmin, user_id)
    _damage(database_url, "cat")

    first = _rotate(database_url)
    assert first.returncode == 1, first.stderr[-600:]  # cat's secret opens with no key
    assert first.stdout.splitlines() == [
        "re-encrypted under key 'k2': 2 session(s), 0 MFA challenge(s); 0 row(s) another "
        "writer changed meanwhile, left as written",
        "1 session(s) no key opens: user(s) cat",
        "not done: keep the old key(s) until a run says done",
    ]
    assert "Traceback" not in first.stderr

    connect(old, garmin, "cat")  # cat signs in again: a new session, under k1 (old replica)
    second = _rotate(database_url)
    assert second.returncode == 0, second.stderr[-600:]
    assert second.stdout.splitlines() == [
        "re-encrypted under key 'k2': 1 session(s), 0 MFA challenge(s); 0 row(s) another "
        "writer changed meanwhile, left as written",
        "done: every stored secret is under the primary key",
    ]
