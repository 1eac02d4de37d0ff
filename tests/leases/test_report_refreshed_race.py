"""ReportRefreshed checks the reported session_version against the row it stores into, locked.
Before, 4055cb7's check read the row without a lock (held_by_caller), and the store then wrote
at whatever version the row held once locked: a rotation by the service (RefreshLease, a
GetStatus refresh) committed between the two was not seen, and the stale report, whose refresh
token that rotation had just killed at Garmin, was stored over the live pair. PostgreSQL
(READ COMMITTED), real gRPC, the emulator over real HTTP."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from auth_service.api import convert
from auth_service.crypto import Keyring
from auth_service.domain.clock import SystemClock
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.servers import ServiceFactory
from tests.leases import stored_tokens
from tests.refresh import DiAccounts

pytestmark = pytest.mark.timeout(120)


def _waiting_on_a_lock(db: sessionmaker[Session]) -> bool:
    with db() as session:
        count = session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE '%garmin_authentication_state%'"
            )
        ).scalar_one()
    return bool(count)


# The race needs row locks under READ COMMITTED: PostgreSQL (SQLite has one writer at a time).
@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_stale_report_racing_a_rotation_is_refused(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
    database_url: str,
) -> None:
    box = SecretBox(keyring)
    clock = SystemClock()
    accounts = DiAccounts(garmin, clock, db_sessionmaker, box)
    upstream = both_providers(service_factory.base_settings.upstream)
    replica = service_factory.start(provider=upstream)
    accounts.seed("rr-race")
    granted = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rr-race", holder="w"), role="worker_full"
    )
    version = granted.status.session_version
    granted_tokens = convert.tokens_from_proto(granted.session, "session")

    # The service's own rotation of session `version` (what SessionRefresher._commit writes
    # for RefreshLease), its transaction still open when the holder's report arrives.
    rotated = upstream.refresh(granted_tokens)  # R1 -> R2 at Garmin: R1 is dead now
    uow = UnitsOfWork(SqlStore(db_sessionmaker, box), clock)
    answer: dict[str, Any] = {}

    def report() -> None:
        try:
            answer["status_version"] = replica.call(
                "ReportRefreshed",
                pb.ReportRefreshedRequest(
                    lease_id=granted.lease.lease_id,
                    session=granted.session,  # still R1
                    session_version=version,
                ),
                role="worker_full",
            ).status.session_version
        except grpc.RpcError as exc:
            answer["code"] = exc.code()

    with uow() as unit:
        row = unit.refreshes.store_rotated(
            "rr-race", version=version, tokens=rotated, now=unit.now, keepalive_not_before=None
        )
        assert row is not None
        worker = threading.Thread(target=report)
        worker.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(db_sessionmaker):
            assert time.monotonic() < deadline, "ReportRefreshed never waited on the row"
            time.sleep(0.05)
    worker.join(30)

    stored = stored_tokens(db_sessionmaker, box, "rr-race")
    assert stored is not None
    kept = stored.oauth2.refresh_token == rotated.oauth2.refresh_token
    assert kept, (
        f"ReportRefreshed of version {version} answered {answer} and stored the refresh token "
        "the committed rotation had just killed over the live one"
    )
    assert answer.get("code") == grpc.StatusCode.INVALID_ARGUMENT
