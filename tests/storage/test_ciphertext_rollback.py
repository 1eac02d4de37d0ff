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
from tests.audit import AuditLog, connect, garmin_tokens, import_tokens
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


def overwrite_blob(database_url: str, user_id: str, blob: bytes) -> None:
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

    overwrite_blob(database_url, "ann", old_blob)

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
    overwrite_blob(database_url, "bob", keyring.encrypt(plaintext, session_aad("bob")))
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


def test_a_grant_whose_session_fails_to_open_is_released_and_recorded(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    """The grant commits before the session is opened (its statement runs alone): when
    opening fails, the lease is released at once, as a sync attempt, and the trail says why.
    The caller holds no lease id, so a lease left standing would hold the session for nobody
    and a second LeaseSession would be refused LEASE_HELD."""
    connect(service, garmin, "cid")
    overwrite_blob(database_url, "cid", b"\x02not-a-sealed-session")
    trail = AuditLog(database_url)
    trail.mark()

    for _ in range(2):
        refused = expect_failure(lambda: _lease(service, "cid"))
        assert (refused.code, refused.reason) == (grpc.StatusCode.DATA_LOSS, "SECRET_UNREADABLE")

    status = service.call("GetStatus", pb.GetStatusRequest(user_id="cid")).status
    assert not status.HasField("lease")
    assert status.HasField("last_sync_attempt_at")
    grant, release = trail.new()[:2]
    assert grant.summary[1:] == ("LeaseSession", "cid", "OK", "OK")
    assert release.summary[1:] == ("LeaseSession", "cid", "DATA_LOSS", "SECRET_UNREADABLE")
    assert (release.lease_id, release.fencing_token) == (grant.lease_id, grant.fencing_token)


def test_lease_next_session_moves_past_a_session_that_fails_to_open(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    """One unreadable row must not stop the queue: it was the most overdue (never synced,
    first by user id), and every worker's LeaseNextSession picked it and failed."""
    connect(service, garmin, "a-unreadable")
    connect(service, garmin, "b-readable")
    overwrite_blob(database_url, "a-unreadable", b"\x02not-a-sealed-session")

    response: pb.LeaseNextSessionResponse = service.call(
        "LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"), role="worker"
    )
    assert response.lease.user_id == "b-readable"
    assert response.access.token
    skipped = service.call("GetStatus", pb.GetStatusRequest(user_id="a-unreadable")).status
    assert not skipped.HasField("lease")
    assert skipped.HasField("last_sync_attempt_at")
