"""A stored session is bound to its row's session_version (issue 14, finding 11): someone who
can write the database but holds no key cannot put an older ciphertext of the same row back
(after the version moved on) and have the service hand out the old session. It answers
DATA_LOSS SECRET_UNREADABLE instead, never INTERNAL. Blobs written before the binding existed
(format 1) stay readable, and rotate-keys rewrites them bound."""

from __future__ import annotations

import json

import grpc
from sqlalchemy import text

from auth_service.crypto import BLOB_VERSION, VERSION_BOUND_BLOB, Keyring, session_aad
from auth_service.storage.database import create_engine_for
from auth_service.storage.key_rotation import rotate_keys
from auth_service.storage.secrets import tokens_to_json
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import connect, garmin_tokens, import_tokens
from tests.fixtures.servers import Replica, expect_failure


def _stored(database_url: str, user_id: str) -> tuple[bytes, int]:
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
    finally:
        engine.dispose()
    return bytes(blob), int(version)


def _overwrite_blob(database_url: str, user_id: str, blob: bytes) -> None:
    """What a database writer without the key can do: put another blob in the row."""
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE garmin_authentication_state SET session_ciphertext = :blob "
                    "WHERE user_id = :user"
                ),
                {"blob": blob, "user": user_id},
            )
    finally:
        engine.dispose()


def _lease(service: Replica, user_id: str) -> pb.LeaseSessionResponse:
    request = pb.LeaseSessionRequest(user_id=user_id, holder="w")
    response: pb.LeaseSessionResponse = service.call("LeaseSession", request, role="worker")
    return response


def test_an_older_ciphertext_of_the_row_does_not_open(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    connect(service, garmin, "ann")
    old_blob, old_version = _stored(database_url, "ann")
    # The user signs in again (say, after a password change): a new session, version + 1.
    import_tokens(service, "ann", garmin_tokens(service, garmin, "ann-new@example.com"))
    _, version = _stored(database_url, "ann")
    assert version == old_version + 1

    _overwrite_blob(database_url, "ann", old_blob)

    for call in (
        lambda: _lease(service, "ann"),
        lambda: service.call("GetStatus", pb.GetStatusRequest(user_id="ann", validate=True)),
    ):
        refused = expect_failure(call)
        assert (refused.code, refused.reason) == (grpc.StatusCode.DATA_LOSS, "SECRET_UNREADABLE")
        assert "fails to decrypt" in refused.message
    # Reading the status needs no secret and still works.
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="ann")).status
    assert status.session_version == version


def test_a_blob_written_before_the_binding_still_opens_and_rotation_binds_it(
    service: Replica, garmin: GarminEmulator, database_url: str, keyring: Keyring
) -> None:
    tokens = connect(service, garmin, "bob")
    _, version = _stored(database_url, "bob")
    plaintext = json.dumps(tokens_to_json(tokens)).encode()
    _overwrite_blob(database_url, "bob", keyring.encrypt(plaintext, session_aad("bob")))
    assert _stored(database_url, "bob")[0][0] == BLOB_VERSION

    granted = _lease(service, "bob")
    assert granted.access.token == tokens.oauth2.access_token
    service.call(
        "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=granted.lease.lease_id), role="worker"
    )

    engine = create_engine_for(database_url)
    try:
        report = rotate_keys(engine, keyring)
    finally:
        engine.dispose()
    assert (report.sessions_rotated, report.complete) == (1, True)
    blob, after = _stored(database_url, "bob")
    assert (blob[0], after) == (VERSION_BOUND_BLOB, version)
    assert _lease(service, "bob").access.token == tokens.oauth2.access_token
