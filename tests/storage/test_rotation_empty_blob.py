"""rotate-keys must report a stored session that no key opens (README, Commands: "Exit 1 while
anything still needs an old key (a secret no key opens ...)"), on either backend alike.

A session blob truncated to nothing is such a secret: every RPC answers DATA_LOSS
SECRET_UNREADABLE for the user and check-config names it as an altered row. On PostgreSQL
rotate-keys reports it (exit 1); on SQLite its stale-row filter `substr(blob, 1, n) != header`
is NULL for an empty blob (SQLite's substr of an empty blob is NULL), so the row is never
looked at and the report says complete (exit 0)."""

from __future__ import annotations

import grpc

from auth_service.crypto import Keyring
from auth_service.storage.database import create_engine_for
from auth_service.storage.key_rotation import rotate_keys
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import connect
from tests.fixtures.servers import Replica, expect_failure
from tests.storage.test_ciphertext_rollback import overwrite_blob


def test_rotate_keys_reports_an_empty_session_blob_on_every_backend(
    service: Replica, garmin: GarminEmulator, database_url: str, keyring: Keyring
) -> None:
    connect(service, garmin, "ann")
    overwrite_blob(database_url, "ann", b"")

    # The service treats the row as an unreadable secret...
    refused = expect_failure(
        lambda: service.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id="ann", holder="w"), role="worker"
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.DATA_LOSS, "SECRET_UNREADABLE")

    # ...and so must rotate-keys, as it does on PostgreSQL.
    engine = create_engine_for(database_url)
    try:
        report = rotate_keys(engine, keyring)
    finally:
        engine.dispose()
    assert report.undecryptable_session_user_ids == ("ann",)
    assert not report.complete
