"""A refresh Garmin answered 200 rotates the refresh token: the old one is dead at Garmin from
then on. When that answer's access token is missing (or not a text), the DI adapter raised
GarminUnavailable and threw the new refresh token away with it: the session's next refresh
presented the dead token, met invalid_grant, and the account was lost. A rotation Garmin made
must never be lost (docs/RELIABILITY.md; README, "What each Garmin answer leads to").

Now the adapter keeps the new refresh token with the old access token marked expired, the
refresher stores that pair, and whoever asked (a grant's central refresh, RefreshLease,
GetStatus with validate) gets UNAVAILABLE GARMIN_UNAVAILABLE, never the expired access token
as a fresh one (nor, for a grant, the refresh token the rotation killed); the next try
refreshes with the stored live refresh token. Real gRPC, the emulator over real HTTP."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.models import GarminTokens, SessionState
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.servers import Replica, RpcFailure, ServiceFactory, expect_failure
from tests.leases import read_row, stored_tokens

from . import DiAccounts

pytestmark = pytest.mark.timeout(60)

UNREADABLE = [{"access_token": None}, {"access_token": 12345}, {"access_token": ""}]
UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE")
ASKERS = 8


@pytest.fixture(params=UNREADABLE, ids=["missing", "a-number", "empty"])
def unreadable_access(
    request: pytest.FixtureRequest, garmin: GarminEmulator
) -> Iterator[dict[str, object]]:
    """What makes Garmin's token answers carry a refresh token but no access token we can
    read (set as the emulator's answer_overrides once the session is seeded)."""
    yield dict(request.param)
    garmin.di.answer_overrides = {}


def _replica(service_factory: ServiceFactory) -> Replica:
    return service_factory.start(provider=both_providers(service_factory.base_settings.upstream))


def _stored(db: sessionmaker[Session], keyring: Keyring, user_id: str) -> GarminTokens:
    tokens = stored_tokens(db, SecretBox(keyring), user_id)
    assert tokens is not None
    return tokens


def _assert_rotation_kept(
    di_accounts: DiAccounts,
    db: sessionmaker[Session],
    keyring: Keyring,
    user_id: str,
    old: GarminTokens,
) -> GarminTokens:
    assert di_accounts.refreshes(user_id) == 1  # Garmin rotated: the old token is dead
    stored = _stored(db, keyring, user_id)
    live = di_accounts.emulator.live_refresh_tokens(di_accounts.email(user_id))
    assert stored.oauth2.refresh_token in live, (
        "Garmin rotated the refresh token but the service did not store the new one"
    )
    assert stored.oauth2.refresh_token != old.oauth2.refresh_token
    assert stored.oauth2.expires_at <= di_accounts.clock.now()  # to be refreshed at next use
    assert read_row(db, user_id).state is SessionState.ACTIVE
    return stored


def _assert_unavailable(failure: RpcFailure) -> None:
    assert (failure.code, failure.reason) == UNAVAILABLE, failure.message


@pytest.mark.parametrize("role", ["worker", "worker_full"])
def test_a_grants_refresh_keeps_the_rotation_and_hands_out_nothing_dead(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    di_accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
    unreadable_access: dict[str, object],
    role: str,
) -> None:
    replica = _replica(service_factory)
    old = di_accounts.seed("grant-odd", access_in=timedelta(seconds=5))  # due at the grant
    garmin.di.answer_overrides = unreadable_access
    request = pb.LeaseSessionRequest(user_id="grant-odd", holder="w")

    _assert_unavailable(expect_failure(lambda: replica.call("LeaseSession", request, role)))
    _assert_rotation_kept(di_accounts, db_sessionmaker, keyring, "grant-odd", old)
    assert not read_row(db_sessionmaker, "grant-odd").lease_id  # released, not left held

    garmin.di.answer_overrides = {}  # Garmin answers whole again
    granted = replica.call("LeaseSession", request, role)
    stored = _stored(db_sessionmaker, keyring, "grant-odd")
    assert di_accounts.refreshes("grant-odd") == 2  # with the refresh token kept
    assert granted.access.token == stored.oauth2.access_token
    assert stored.oauth2.expires_at > di_accounts.clock.now() + timedelta(hours=1)
    if role == "worker_full":
        assert granted.session.oauth2.refresh_token == stored.oauth2.refresh_token
    assert di_accounts.reuses("grant-odd") == 0


def test_refresh_lease_keeps_the_rotation_and_the_holder_asks_again(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    di_accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
    unreadable_access: dict[str, object],
) -> None:
    replica = _replica(service_factory)
    old = di_accounts.seed("holder-odd")
    granted = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="holder-odd", holder="w"), "worker"
    )
    version = granted.status.session_version
    ask = pb.RefreshLeaseRequest(lease_id=granted.lease.lease_id, session_version=version)
    garmin.di.answer_overrides = unreadable_access

    _assert_unavailable(expect_failure(lambda: replica.call("RefreshLease", ask, "worker")))
    _assert_rotation_kept(di_accounts, db_sessionmaker, keyring, "holder-odd", old)

    garmin.di.answer_overrides = {}
    answer = replica.call("RefreshLease", ask, "worker")  # the same lease, the same version
    stored = _stored(db_sessionmaker, keyring, "holder-odd")
    assert di_accounts.refreshes("holder-odd") == 2
    assert answer.access.token == stored.oauth2.access_token != old.oauth2.access_token
    assert answer.status.session_version == version + 2
    assert di_accounts.reuses("holder-odd") == 0


def test_get_status_validate_keeps_the_rotation_and_the_session(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    di_accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
    unreadable_access: dict[str, object],
) -> None:
    """Validating with the expired access token would read Garmin's 401 as a refused fresh
    token and end the session: the refresher answers GARMIN_UNAVAILABLE first."""
    replica = service_factory.start(
        provider=both_providers(service_factory.base_settings.upstream),
        refresh=dataclasses.replace(
            service_factory.base_settings.refresh, validate_interval_seconds=0.0
        ),
    )
    old = di_accounts.seed("status-odd", access_in=timedelta(seconds=-5))
    garmin.di.answer_overrides = unreadable_access
    request = pb.GetStatusRequest(user_id="status-odd", validate=True)

    _assert_unavailable(expect_failure(lambda: replica.call("GetStatus", request)))
    _assert_rotation_kept(di_accounts, db_sessionmaker, keyring, "status-odd", old)

    garmin.di.answer_overrides = {}
    status = replica.call("GetStatus", request).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert di_accounts.refreshes("status-odd") == 2


def test_holders_waiting_on_such_a_rotation_elsewhere_get_nothing_dead_either(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    di_accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
    unreadable_access: dict[str, object],
) -> None:
    """Holders on two replicas ask RefreshLease at once: one refreshes, the others wait for its
    claim and then read the stored pair, whose access token is the expired one. Each gets
    GARMIN_UNAVAILABLE; Garmin saw one refresh."""
    replicas = [_replica(service_factory), _replica(service_factory)]
    old = di_accounts.seed("waiters-odd")
    granted = replicas[0].call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="waiters-odd", holder="w"), "worker"
    )
    ask = pb.RefreshLeaseRequest(
        lease_id=granted.lease.lease_id, session_version=granted.status.session_version
    )
    garmin.di.answer_overrides = unreadable_access
    garmin.fail_next(DI_TOKEN_PATH, None, delay=0.3)  # every ask arrives while it is in flight
    barrier = threading.Barrier(ASKERS)

    def refresh_lease(index: int) -> RpcFailure:
        barrier.wait()
        return expect_failure(lambda: replicas[index % 2].call("RefreshLease", ask, "worker"))

    with ThreadPoolExecutor(max_workers=ASKERS) as pool:
        failures = list(pool.map(refresh_lease, range(ASKERS)))

    assert {(f.code, f.reason) for f in failures} == {UNAVAILABLE}
    _assert_rotation_kept(di_accounts, db_sessionmaker, keyring, "waiters-odd", old)
