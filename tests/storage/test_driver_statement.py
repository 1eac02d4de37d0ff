"""The lease statements run straight on psycopg (auth_service.storage.driver_statement) give
exactly what SQLAlchemy's execution of the same statements gives, and fail as it fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Row, event, insert, text
from sqlalchemy.exc import DBAPIError

from auth_service.api.errors import DATABASE_UNAVAILABLE_ROW, row_for
from auth_service.crypto import Keyring
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.models import SessionState
from auth_service.storage.audit_repository import SqlAuditRepository
from auth_service.storage.database import create_engine_for
from auth_service.storage.lease_repository import SqlLeaseRepository
from auth_service.storage.models import GarminAuthenticationState
from auth_service.storage.secrets import SecretBox
from auth_service.storage.session_repository import SqlSessionRepository

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=UTC)
DIGEST = "d" * 64
SECRET_DIGEST = "5ec7e7" * 10 + "d1d1"


@pytest.fixture
def pg_engine(pg_database_url: str) -> Iterator[Engine]:
    engine = create_engine_for(pg_database_url)
    with engine.begin() as connection:
        connection.execute(
            insert(GarminAuthenticationState),
            [
                {
                    "user_id": user_id,
                    "state": SessionState.ACTIVE,
                    "session_ciphertext": b"sealed",
                    "session_version": 1,
                    "created_at": T0,
                    "updated_at": T0,
                    "last_synced_at": T0 - timedelta(hours=hours),
                }
                for user_id, hours in (("alice", 3), ("bob", 2), ("team-carol", 5))
            ],
        )
    yield engine
    engine.dispose()


def _repository(connection: Connection) -> SqlLeaseRepository:
    box = SecretBox(Keyring.parse(Keyring.generate_key_value("test")))
    sessions = SqlSessionRepository(connection, box)
    return SqlLeaseRepository(connection, sessions, SqlAuditRepository(connection))


def _lease_calls(leases: SqlLeaseRepository) -> list[Any]:
    """Every lease statement once, in an order where each finds what it needs."""
    later = T0 + timedelta(seconds=1)
    expires = T0 + timedelta(minutes=10)
    grant: dict[str, Any] = {"holder": "w1", "caller": "sync", "now": T0, "expires_at": expires}
    holder: dict[str, Any] = {"caller": "sync", "now": later}
    due = T0 - timedelta(hours=1)
    return [
        leases.grant("alice", lease_digest=DIGEST, **grant, record_as=AuditedRpc.LEASE_SESSION),
        leases.grant("alice", lease_digest="x" * 64, **grant),  # refused: held
        leases.find("alice"),
        leases.find_by_lease(DIGEST, later),
        leases.renew(DIGEST, expires_at=expires, **holder, record_as=AuditedRpc.RENEW_LEASE),
        leases.release(DIGEST, synced_through=later, **holder, record_as=AuditedRpc.RELEASE_LEASE),
        leases.release(DIGEST, synced_through=None, **holder),  # refused: ended
        leases.grant_next(lease_digest="n" * 64, **grant, due_before=due, user_id_prefix="team-"),
        leases.grant_next(lease_digest="m" * 64, **grant, due_before=due),
        leases.release("m" * 64, synced_through=None, **holder, record_as=AuditedRpc.RELEASE_LEASE),
        leases.invalidate("n" * 64, now=later, reason="rejected"),
    ]


def _plain(result: Any) -> Any:
    """A row (or a grant holding one) as comparable values, with its column names."""
    if result is None:
        return None
    row = getattr(result, "row", result)
    took_over = getattr(result, "took_over", None)
    return (took_over, tuple(zip(row._fields, row, strict=True)))


def _run(engine: Engine, calls: Callable[[SqlLeaseRepository], list[Any]]) -> list[Any]:
    with engine.connect() as connection, connection.begin() as transaction:
        results = [_plain(result) for result in calls(_repository(connection))]
        audit = connection.execute(text("SELECT rpc, user_id FROM garmin_audit_event ORDER BY id"))
        results.append(audit.all())
        transaction.rollback()
    return results


@contextmanager
def _through_sqlalchemy(engine: Engine) -> Iterator[None]:
    """While something listens to the engine's cursor events, statements go through
    SQLAlchemy (so recording tools see them)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert any("UPDATE" in statement for statement in seen)


def test_rows_are_those_sqlalchemy_returns(pg_engine: Engine) -> None:
    direct = _run(pg_engine, _lease_calls)
    with _through_sqlalchemy(pg_engine):
        through_sqlalchemy = _run(pg_engine, _lease_calls)

    assert direct == through_sqlalchemy
    granted = direct[0]
    assert granted is not None
    assert dict(granted[1])["lease_id"] == DIGEST
    assert dict(granted[1])["lease_expires_at"].tzinfo is UTC
    assert dict(granted[1])["state"] is SessionState.ACTIVE
    assert direct[1] is None
    assert direct[6] is None
    assert dict(direct[7][1])["user_id"] == "team-carol"  # the scoped grant
    assert [rpc for rpc, _user in direct[-1]] == [
        "LeaseSession",
        "RenewLease",
        "ReleaseLease",
        "ReleaseLease",
    ]


def test_the_direct_path_skips_sqlalchemy_rows(pg_engine: Engine) -> None:
    with pg_engine.connect() as connection, connection.begin() as transaction:
        row = _repository(connection).find("alice")
        transaction.rollback()
    assert row is not None
    assert not isinstance(row, Row)
    assert row.user_id == "alice"
    assert row.last_synced_at == T0 - timedelta(hours=3)


def test_a_failed_statement_raises_sqlalchemys_error_without_values(pg_engine: Engine) -> None:
    expires = T0 + timedelta(minutes=10)
    with pg_engine.connect() as holder, pg_engine.connect() as connection:
        holder.execute(text("SELECT 1 FROM garmin_authentication_state FOR UPDATE"))
        connection.execute(text("SET lock_timeout = '50ms'"))
        with pytest.raises(DBAPIError) as failed:
            _repository(connection).grant(
                "alice",
                lease_digest=SECRET_DIGEST,
                holder="w1",
                caller="sync",
                now=T0,
                expires_at=expires,
                record_as=AuditedRpc.LEASE_SESSION,
            )
        connection.rollback()
        holder.rollback()
    assert "lock timeout" in str(failed.value)
    assert SECRET_DIGEST not in str(failed.value)
    assert not failed.value.connection_invalidated
    assert row_for(failed.value) is DATABASE_UNAVAILABLE_ROW
    # The pool still hands out working connections.
    with pg_engine.connect() as connection:
        assert _repository(connection).find("alice") is not None


def test_a_dead_connection_is_invalidated_and_answers_unavailable(pg_engine: Engine) -> None:
    with pg_engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        connection.commit()
        with pg_engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as failed:
            _repository(connection).find("alice")
        assert failed.value.connection_invalidated
        assert row_for(failed.value) is DATABASE_UNAVAILABLE_ROW
        assert connection.invalidated
    with pg_engine.connect() as connection:
        assert _repository(connection).find("alice") is not None
