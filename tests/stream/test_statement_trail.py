"""A lease statement that records its own trail (PostgreSQL: one statement, its change-log
status built by SQL; SQLite: written from Python) logs exactly the status the row was left
in, as encode_status would, and an audit event like the one AuditTrail.record would write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from auth_service.crypto import Keyring
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.changes import ChangeFilter
from auth_service.domain.lease_ids import lease_digest, lease_ref
from auth_service.domain.models import SessionStatusView
from auth_service.domain.views import status_view
from auth_service.storage.change_log import decode_status, encode_status
from auth_service.storage.change_sequencer import sequence_all
from auth_service.storage.database import session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from tests.fixtures.di_upstream import di_tokens
from tests.leases import seed_active

USER = "trail-user"
CALLER = "worker-a"


def _answer() -> dict[str, object]:
    return {
        "scope": "CONNECT_READ",
        "jti": "jti-1",
        "token_type": "Bearer",
        "access_token": "access-" + "a" * 40,
        "refresh_token": "refresh-" + "r" * 40,
        "expires_in": 3600,
        "refresh_token_expires_in": 7_776_000,
    }


def _as_logged(status: SessionStatusView) -> SessionStatusView:
    """What the log gives back of a status the Python codec wrote."""
    return decode_status(encode_status(status))


def test_grant_renew_release_log_the_rows_they_leave(engine: Engine, keyring: Keyring) -> None:
    db = session_factory(engine)
    box = SecretBox(keyring)
    store = SqlStore(db, box)
    # Microseconds on purpose: the SQL codec must keep them.
    now = datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=UTC)
    seed_active(db, box, USER, di_tokens(_answer()), now - timedelta(hours=1))
    digest = lease_digest("lease-one")
    expected: list[SessionStatusView] = []

    with store.transaction() as transaction:
        granted = transaction.leases.grant(
            USER,
            lease_digest=digest,
            holder="holder-1",
            caller=CALLER,
            now=now,
            expires_at=now + timedelta(minutes=5),
            record_as=AuditedRpc.LEASE_SESSION,
        )
        assert granted is not None
        expected.append(status_view(granted.row, now))
    later = now + timedelta(seconds=30, microseconds=7)
    with store.transaction() as transaction:
        renewed = transaction.leases.renew(
            digest,
            caller=CALLER,
            now=later,
            expires_at=later + timedelta(minutes=5),
            record_as=AuditedRpc.RENEW_LEASE,
        )
        assert renewed is not None
        expected.append(status_view(renewed, later))
    # Another caller presenting the lease changes nothing and records nothing.
    with store.transaction() as transaction:
        refused = transaction.leases.release(
            digest,
            caller="someone-else",
            now=later,
            synced_through=later,
            record_as=AuditedRpc.RELEASE_LEASE,
        )
        assert refused is None
    with store.transaction() as transaction:
        released = transaction.leases.release(
            digest,
            caller=CALLER,
            now=later,
            synced_through=later - timedelta(minutes=1),
            record_as=AuditedRpc.RELEASE_LEASE,
        )
        assert released is not None
        expected.append(status_view(released, later))

    sequence_all(db)
    with store.transaction() as transaction:
        logged = transaction.changes.read_after(0, ChangeFilter(), limit=10).changes
        events = transaction.audit_events.list_page(
            user_id=USER,
            start_time=None,
            end_time=None,
            after=None,
            oldest_first=True,
            limit=10,
        )
    assert expected[0].lease is not None
    assert expected[1].lease is not None
    assert expected[2].lease is None
    assert [change.rpc for change in logged] == ["LeaseSession", "RenewLease", "ReleaseLease"]
    assert [change.status for change in logged] == [_as_logged(status) for status in expected]
    assert [change.occurred_at for change in logged] == [now, later, later]
    assert [
        (e.rpc, e.caller, e.outcome_code, e.outcome_reason, e.lease_ref, e.fencing_token)
        for e in events
    ] == [
        (rpc, CALLER, "OK", "OK", lease_ref(digest), granted.row.fencing_token)
        for rpc in ("LeaseSession", "RenewLease", "ReleaseLease")
    ]
    assert [e.occurred_at for e in events] == [now, later, later]
