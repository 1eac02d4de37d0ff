"""A lease id reaches only its holder (issue 14, finding 4): viewers see a short reference in
ListAuditEvents and GetStatus, the database holds only the id's SHA-256, and migration 0009
hashes the ids an older release stored in clear without ending the leases they name."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from auth_service.domain.lease_ids import lease_digest, lease_ref
from auth_service.storage.database import create_engine_for
from auth_service.storage.schema import (
    current_revision,
    downgrade,
    head_revision,
    upgrade_to_head,
)
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import connect, lease, read_events
from tests.fixtures.database import pg_dump
from tests.fixtures.servers import Replica, expect_failure


def _database_bytes(database_url: str) -> bytes:
    """Everything the database stores: SQLite's files byte for byte, PostgreSQL's data as
    pg_dump writes it."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        files = [path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-journal"))]
        return b"".join(file.read_bytes() for file in files if file.exists())
    return pg_dump(database_url, "--data-only").encode()


def _every_lease_call(service: Replica, garmin: GarminEmulator) -> list[pb.Lease]:
    """Grant, renew, report, release and a refused report after release, for two users."""
    connect(service, garmin, "ann")
    connect(service, garmin, "bob")
    ann = lease(service, "ann", role="worker_full")
    service.call(
        "RenewLease", pb.RenewLeaseRequest(lease_id=ann.lease.lease_id), role="worker_full"
    )
    service.call(
        "ReportRefreshed",
        pb.ReportRefreshedRequest(lease_id=ann.lease.lease_id, session=ann.session),
        role="worker_full",
    )
    service.call(
        "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=ann.lease.lease_id), role="worker_full"
    )
    expect_failure(
        lambda: service.call(
            "ReportRefreshed",
            pb.ReportRefreshedRequest(lease_id=ann.lease.lease_id, session=ann.session),
            role="worker_full",
        )
    )
    bob = lease(service, "bob")  # still held: GetStatus shows it
    return [ann.lease, bob.lease]


def test_a_viewer_sees_references_never_lease_ids(service: Replica, garmin: GarminEmulator) -> None:
    ann, bob = _every_lease_call(service, garmin)
    assert ann.lease_ref == lease_ref(lease_digest(ann.lease_id))

    events = service.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(page_size=100), role="viewer"
    ).events
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="bob"), role="viewer")
    answers = b"".join(message.SerializeToString() for message in [*events, status])
    for grant in (ann, bob):
        assert grant.lease_id.encode() not in answers
    # The trail still tells the leases apart, by reference.
    by_rpc = {(event.rpc, event.outcome_reason): event for event in events if event.user_id}
    assert by_rpc[("ReleaseLease", "OK")].lease_ref == ann.lease_ref
    assert by_rpc[("ReportRefreshed", "LEASE_LOST")].lease_ref == ann.lease_ref
    assert {event.lease_id for event in events} == {""}
    assert status.status.lease.lease_ref == bob.lease_ref
    assert status.status.lease.lease_id == ""


def test_the_database_never_holds_a_lease_id(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    leases = _every_lease_call(service, garmin)
    stored = _database_bytes(database_url)
    for grant in leases:
        assert len(grant.lease_id) >= 32
        assert grant.lease_id.encode() not in stored
    # What is stored instead: the digest, which the events name the user's lease by.
    assert lease_digest(leases[1].lease_id).encode() in stored


def test_migration_0009_hashes_stored_ids_and_their_leases_live_on(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    connect(service, garmin, "cal")
    granted = lease(service, "cal")
    lease_id = granted.lease.lease_id
    # As revision 0008's service left it: the id in clear in the row and the grant's event
    # (the revisions after 0009 reverted first, so that the upgrade replays them too).
    downgrade(database_url, "0009")
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as connection:
            for table in ("garmin_authentication_state", "garmin_audit_event"):
                connection.execute(
                    text(f"UPDATE {table} SET lease_id = :id WHERE lease_id IS NOT NULL"),  # noqa: S608
                    {"id": lease_id},
                )
            connection.execute(text("UPDATE alembic_version SET version_num = '0008'"))
    finally:
        engine.dispose()
    assert {event.lease_id for event in read_events(database_url)} == {None, lease_id}

    upgrade_to_head(database_url)

    assert current_revision(database_url) == head_revision()
    assert {event.lease_id for event in read_events(database_url)} == {None, lease_digest(lease_id)}
    # The holder of the lease taken before the upgrade releases it after.
    released = service.call(
        "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease_id), role="worker"
    )
    assert released.status.user_id == "cal"
    assert not released.status.HasField("lease")
    # And a refused report under it is still named after its user (from the hashed grant event).
    expect_failure(
        lambda: service.call(
            "ReportInvalidated",
            pb.ReportInvalidatedRequest(lease_id=lease_id, reason="gone"),
            role="worker",
        )
    )
    refused = read_events(database_url)[-1]
    assert (refused.rpc, refused.user_id, refused.outcome_reason) == (
        "ReportInvalidated",
        "cal",
        "LEASE_LOST",
    )
