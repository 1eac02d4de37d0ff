"""RefreshLease is single flight (issue 13): a holder's requests that all got a 401 at once ask
with the same session version, on any replica, and Garmin sees one refresh. Real gRPC, two
replicas on one database (SQLite or PostgreSQL), the emulator over real HTTP."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.policies import LoginFlow
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, EXCHANGE_PATH, GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.servers import Replica, ServiceFactory
from tests.leases import read_row, stored_tokens
from tests.worker import connect

from . import DiAccounts

pytestmark = pytest.mark.timeout(120)

ASKERS = 16


def _refresh_all_at_once(
    replicas: list[Replica], lease_id: str, version: int
) -> list[pb.RefreshLeaseResponse]:
    """ASKERS RefreshLease calls with one version, alternating replicas, released together."""
    barrier = threading.Barrier(ASKERS)

    def ask(index: int) -> pb.RefreshLeaseResponse:
        barrier.wait()
        request = pb.RefreshLeaseRequest(lease_id=lease_id, session_version=version)
        answer: pb.RefreshLeaseResponse = replicas[index % 2].call(
            "RefreshLease", request, role="worker"
        )
        return answer

    with ThreadPoolExecutor(max_workers=ASKERS) as pool:
        return list(pool.map(ask, range(ASKERS)))


def test_16_refresh_lease_calls_on_two_replicas_rotate_a_di_session_once(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    di_accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
) -> None:
    upstream = both_providers(service_factory.base_settings.upstream)
    replicas = [service_factory.start(provider=upstream) for _ in range(2)]
    old = di_accounts.seed("rl-di")
    granted = replicas[0].call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rl-di", holder="w"), role="worker"
    )
    assert granted.access.token == old.oauth2.access_token
    version = granted.status.session_version
    # Garmin takes a while: every call arrives while the one refresh is in flight.
    garmin.fail_next(DI_TOKEN_PATH, None, delay=0.3)

    answers = _refresh_all_at_once(replicas, granted.lease.lease_id, version)

    assert di_accounts.refreshes("rl-di") == 1
    assert di_accounts.reuses("rl-di") == 0
    stored = stored_tokens(db_sessionmaker, SecretBox(keyring), "rl-di")
    assert stored is not None
    assert stored.oauth2.refresh_token != old.oauth2.refresh_token
    assert {answer.access.token for answer in answers} == {stored.oauth2.access_token}
    assert {answer.status.session_version for answer in answers} == {version + 1}
    assert {answer.access.domain for answer in answers} == {"garmin.com"}
    row = read_row(db_sessionmaker, "rl-di")
    assert (row.session_version, row.refresh_claim_id) == (version + 1, None)
    assert row.lease_id == lease_digest(granted.lease.lease_id)


def test_16_refresh_lease_calls_on_two_replicas_exchange_a_garth_session_once(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
) -> None:
    replicas = [service_factory.start(login_flow=LoginFlow.GARTH) for _ in range(2)]
    email = connect(replicas[0], garmin, "rl-garth")
    granted = replicas[1].call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rl-garth", holder="w"), role="worker"
    )
    version = granted.status.session_version
    exchanges = garmin.exchange_count(email)
    garmin.fail_next(EXCHANGE_PATH, None, delay=0.3)

    answers = _refresh_all_at_once(replicas, granted.lease.lease_id, version)

    assert garmin.exchange_count(email) == exchanges + 1
    stored = stored_tokens(db_sessionmaker, SecretBox(keyring), "rl-garth")
    assert stored is not None
    assert stored.oauth2.access_token != granted.access.token
    assert {answer.access.token for answer in answers} == {stored.oauth2.access_token}
    assert {answer.status.session_version for answer in answers} == {version + 1}
    row = read_row(db_sessionmaker, "rl-garth")
    assert (row.session_version, row.refresh_claim_id) == (version + 1, None)


def test_a_newer_stored_token_that_expired_is_refreshed_not_handed_out(
    service_factory: ServiceFactory, garmin: GarminEmulator, di_accounts: DiAccounts
) -> None:
    replica = service_factory.start(provider=both_providers(service_factory.base_settings.upstream))
    di_accounts.seed("rl-expired")
    granted = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rl-expired", holder="w"), role="worker"
    )
    lease_id, version = granted.lease.lease_id, granted.status.session_version
    # Garmin now hands out access tokens that expire at once.
    garmin.di.access_token_expires_in = 1
    first = replica.call(
        "RefreshLease", pb.RefreshLeaseRequest(lease_id=lease_id, session_version=version), "worker"
    )
    assert first.status.session_version == version + 1
    garmin.di.access_token_expires_in = 3600

    # A holder still on the old version: the stored token is newer, but no longer usable.
    late = replica.call(
        "RefreshLease", pb.RefreshLeaseRequest(lease_id=lease_id, session_version=version), "worker"
    )

    assert di_accounts.refreshes("rl-expired") == 2
    assert di_accounts.reuses("rl-expired") == 0
    assert late.status.session_version == version + 2
    assert late.access.token != first.access.token
