"""`rotate-keys` run with a wrong key under the primary key id (same id, other bytes: a key
re-generated or mistyped for the job) refuses before touching a row. Before the fix it sealed
every session still under the old key with that wrong key and exited 0, and the replicas,
which hold the real key under that id, could no longer open them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import grpc
from sqlalchemy import text

from auth_service.crypto import Keyring
from auth_service.storage.database import create_engine_for
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import connect
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.service.test_rolling_key_rotation import configured_keyring

CLI = str(Path(sys.executable).parent / "garmin-auth-service")
K1 = Keyring.generate_key_value("k1")
K2 = Keyring.generate_key_value("k2")
# The operator's mistake: k2 under its right id, with other bytes.
K2_WRONG = "k2:" + base64.b64encode(os.urandom(32)).decode()


def _blob(database_url: str, user_id: str) -> bytes:
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as connection:
            return bytes(
                connection.execute(
                    text(
                        "SELECT session_ciphertext FROM garmin_authentication_state "
                        "WHERE user_id = :user"
                    ),
                    {"user": user_id},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _lease_and_release(replica: Replica, user_id: str) -> None:
    granted = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id=user_id, holder="w"), role="worker"
    )
    replica.call(
        "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=granted.lease.lease_id), role="worker"
    )


def test_rotate_keys_with_a_wrong_key_under_the_primary_id_refuses_and_touches_nothing(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    database_url: str,
) -> None:
    # Before the rotation: "ann" was stored under k1, "bob" (after the promote) under k2.
    old = service_factory.start(keyring=configured_keyring(K1))
    connect(old, garmin, "ann")
    promoted = service_factory.start(keyring=configured_keyring(f"{K1},{K2}", primary="k2"))
    connect(promoted, garmin, "bob")
    ann_before = _blob(database_url, "ann")
    assert Keyring.key_id_of(ann_before) == "k1"

    # Step 4 of the README, with the wrong bytes for k2 in the job's configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}
    env.update(
        GARMIN_AUTH_DATABASE_URL=database_url,
        GARMIN_AUTH_ENCRYPTION_KEYS=f"{K1},{K2_WRONG}",
        GARMIN_AUTH_ENCRYPTION_PRIMARY_KEY_ID="k2",
    )
    done = subprocess.run(
        [CLI, "rotate-keys"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in done.stderr, done.stderr
    exit_code = done.returncode

    ann_after = _blob(database_url, "ann")
    # What the replicas (holding the real k2) then answer for ann:
    outcome = "OK"
    try:
        _lease_and_release(promoted, "ann")
    except grpc.RpcError:
        failure = expect_failure(lambda: _lease_and_release(promoted, "ann"))
        outcome = f"{failure.code.name} {failure.reason}"
    assert (exit_code != 0, ann_after == ann_before, outcome) == (True, True, "OK"), (
        f"rotate-keys exited {exit_code}, ann's blob was "
        f"{'kept' if ann_after == ann_before else 'rewritten under the wrong k2'}, "
        f"and the replica with the real k2 now answers {outcome} for ann"
    )
