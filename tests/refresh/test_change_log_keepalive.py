"""Keep-alive: a session Garmin rejects at keep-alive ends AUTH_EXPIRED with its audit event
and its change-log entry (README "Change stream and webhooks"); before, the entry was missing.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.models import SessionState
from garmin_emulator import GarminEmulator
from tests.audit.trail_rows import entries, events
from tests.leases import read_row
from tests.refresh import DiAccounts, Replica

pytestmark = pytest.mark.timeout(120)


def test_keepalive_rejection_appends_the_auth_expired_change(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    database_url: str,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed("ka-dead", refresh_in=timedelta(days=1))
    emulator.revoke_tokens(accounts.email("ka-dead"))
    assert replicas[0].keepalive.run_once().ended == 1
    assert read_row(db_sessionmaker, "ka-dead").state is SessionState.AUTH_EXPIRED
    assert events(database_url, "ka-dead") == [
        ("KeepAlive", "ka-dead", "FAILED_PRECONDITION", "SESSION_NOT_ACTIVE")
    ]
    assert [(e.rpc, e.state) for e in entries(database_url, "ka-dead")] == [
        ("KeepAlive", "AUTH_EXPIRED")
    ]
