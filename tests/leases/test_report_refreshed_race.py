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
from sqlalchemy.orm import Session, sessionmaker

from auth_service.api import convert
from auth_service.crypto import Keyring
from auth_service.domain.clock import SystemClock
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.session_proto import tokens_to_proto
from garmin_emulator import GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.servers import ServiceFactory
from tests.leases import row_lock_waiters, stored_tokens
from tests.refresh import DiAccounts

pytestmark = pytest.mark.timeout(120)


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
        locked = unit.sessions.lock("rr-race")
        assert locked is not None
        row = unit.refreshes.store_rotated(
            "rr-race",
            version=version,
            tokens=rotated,
            now=unit.now,
            keepalive_not_before=None,
            replaced=locked,
        )
        assert row is not None
        worker = threading.Thread(target=report)
        worker.start()
        deadline = time.monotonic() + 10
        while row_lock_waiters(db_sessionmaker) == 0:
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


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_report_racing_an_import_that_ended_the_lease_answers_lease_lost(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
) -> None:
    """An import (new credentials) ends the live lease, committed while the holder's report
    waits on the row. The holder has lost its lease: LEASE_LOST tells it to stop. Before, the
    report compared its version first and answered INVALID_ARGUMENT, which tells a holder its
    report was malformed, and a holder keeps its lease after that."""
    box = SecretBox(keyring)
    clock = SystemClock()
    accounts = DiAccounts(garmin, clock, db_sessionmaker, box)
    upstream = both_providers(service_factory.base_settings.upstream)
    replica = service_factory.start(provider=upstream)
    accounts.seed("rr-import")
    granted = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rr-import", holder="w"), role="worker_full"
    )
    own = upstream.refresh(convert.tokens_from_proto(granted.session, "session"))
    imported = accounts.seed("rr-import-file")  # another pair, as a token file brings it
    uow = UnitsOfWork(SqlStore(db_sessionmaker, box), clock)
    answer: dict[str, Any] = {}

    def report() -> None:
        try:
            replica.call(
                "ReportRefreshed",
                pb.ReportRefreshedRequest(
                    lease_id=granted.lease.lease_id,
                    session=tokens_to_proto(own),
                    session_version=granted.status.session_version,
                ),
                role="worker_full",
            )
            answer["code"] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            answer["code"] = exc.code()

    with uow() as unit:
        locked = unit.sessions.lock_or_create("rr-import", unit.now)
        unit.sessions.install_tokens(locked, imported, unit.now, validated=True)
        worker = threading.Thread(target=report)
        worker.start()
        deadline = time.monotonic() + 10
        while row_lock_waiters(db_sessionmaker) == 0:
            assert time.monotonic() < deadline, "ReportRefreshed never waited on the row"
            time.sleep(0.05)
    worker.join(30)

    # FAILED_PRECONDITION is LEASE_LOST's code (README, Errors).
    assert answer.get("code") == grpc.StatusCode.FAILED_PRECONDITION, f"answered {answer}"
    assert stored_tokens(db_sessionmaker, box, "rr-import") == imported
