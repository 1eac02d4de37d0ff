"""The refresh over real gRPC: two replicas answering GetStatus(validate) for one expiring DI
session refresh it once, and the server's background keep-alive refreshes an idle one; the
metrics count both."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.policies import RefreshSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.servers import ServiceFactory
from tests.leases import read_row

from . import DiAccounts

pytestmark = pytest.mark.timeout(120)


def _refreshes(replica: object, outcome: str) -> float:
    registry = replica.running.application.metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value(
        "garmin_auth_refreshes_total", {"kind": "DI_OAUTH2", "outcome": outcome}
    )
    return float(value or 0)


def test_16_get_status_callers_on_two_replicas_refresh_once(
    service_factory: ServiceFactory, garmin: GarminEmulator, di_accounts: DiAccounts
) -> None:
    upstream = both_providers(service_factory.base_settings.upstream)
    replicas = [service_factory.start(provider=upstream) for _ in range(2)]
    di_accounts.seed("grpc-di", access_in=timedelta(seconds=-5))
    garmin.fail_next(DI_TOKEN_PATH, None, delay=0.3)
    barrier = threading.Barrier(16)

    def ask(index: int) -> pb.SessionStatus:
        barrier.wait()
        request = pb.GetStatusRequest(user_id="grpc-di", validate=True)
        status: pb.SessionStatus = replicas[index % 2].call("GetStatus", request).status
        return status

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(ask, range(16)))

    assert {status.state for status in statuses} == {pb.SESSION_STATE_ACTIVE}
    assert {status.kind for status in statuses} == {pb.SESSION_KIND_DI_OAUTH2}
    assert di_accounts.refreshes("grpc-di") == 1
    assert di_accounts.reuses("grpc-di") == 0
    assert sum(_refreshes(replica, "rotated") for replica in replicas) == 1


def test_the_server_keeps_an_idle_session_alive_in_the_background(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    di_accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    upstream = both_providers(service_factory.base_settings.upstream)
    di_accounts.seed("grpc-idle", refresh_in=timedelta(days=2))
    replica = service_factory.start(
        provider=upstream,
        refresh=RefreshSettings(keepalive_interval_seconds=0.2, validate_interval_seconds=0.0),
    )

    def dies_at() -> datetime | None:
        return read_row(db_sessionmaker, "grpc-idle").refresh_token_expires_at

    # Garmin counts the rotation before the pair is committed: wait for the row.
    far = datetime.now(UTC) + timedelta(days=29)
    deadline = time.monotonic() + 20
    while (dies_at() or far) <= far and time.monotonic() < deadline:
        time.sleep(0.05)

    assert (dies_at() or far) > far
    assert di_accounts.refreshes("grpc-idle") == 1
    status = replica.call("GetStatus", pb.GetStatusRequest(user_id="grpc-idle")).status
    assert status.refresh_token_expires_at.ToDatetime(UTC) > datetime.now(UTC) + timedelta(days=29)
    assert _refreshes(replica, "rotated") == 1
    registry = replica.running.application.metrics.registry
    lag = registry.get_sample_value("garmin_auth_keepalive_lag_seconds")
    assert lag is not None
    assert lag > 29 * 86400
