"""A worker_full grant that joins another replica's refresh in flight, and gives up waiting
for it, hands out nothing: it answers GARMIN_UNAVAILABLE and releases the lease.

CentralRefresh.hand_out joins a live claim for a `worker_full` holder so that no holder ever
gets a refresh token that a rotation is killing. Before, when the wait ran out ("another
replica is still refreshing this session") hand_out took it for Garmin being busy and, the
access token being still valid, handed out the stored pair, whose refresh token Garmin had
already rotated: a live lease with a dead refresh token. (A claim outlives the waiters on
purpose: a replica cut off from the database while it stores a rotated pair keeps it.)

Replica A refreshes, Garmin rotates, A loses PostgreSQL (its role may no longer log in, as in
tests/refresh/test_database_outage.py); replica B, still on the database, grants a worker_full
lease. A private cluster, so cutting a role off touches nothing else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.models import LeaseGrant, SessionState
from auth_service.domain.policies import RefreshSettings
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import GarminEmulator
from tests.leases import read_row
from tests.refresh import ASKER, DiAccounts, build_replica, during_next_refresh
from tests.refresh.test_database_outage import _engine_of_a_role_of_its_own, _let_log_in
from tests.reliability.cluster import PrivateCluster, migrated_cluster

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

USER = "grant-gives-up"


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    with migrated_cluster() as running:
        yield running


def test_a_worker_full_grant_that_stops_waiting_hands_out_no_dying_refresh_token(
    cluster: PrivateCluster,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    box: SecretBox,
    clock: FakeClock,
) -> None:
    admin = create_engine_for(cluster.url)
    engine_a = _engine_of_a_role_of_its_own(admin, cluster.url, "replica_a")
    try:
        db_a, db_b = session_factory(engine_a), session_factory(admin)
        accounts = DiAccounts(emulator, clock, db_b, box)
        # Access token good for 20 h; refresh token inside keep-alive's window.
        accounts.seed(USER, refresh_in=timedelta(days=3))
        version = read_row(db_b, USER).session_version
        # As configured: waiters give up 10 s after the Garmin call's worst case (scaled
        # down); the claim outlives the commit retry.
        settings = RefreshSettings(claim_seconds=2.0, wait_seconds=3.0, commit_retry_seconds=60.0)
        replica_a = build_replica(db_a, box, upstream, clock, settings)
        replica_b = build_replica(db_b, box, upstream, clock, settings)
        answers: list[object] = []

        def refresh_on_a() -> None:
            try:
                with during_next_refresh(
                    emulator, lambda: _let_log_in(admin, "replica_a", allowed=False)
                ):
                    answers.append(replica_a.refresher.refresh(USER, version, ASKER))
            except Exception as exc:  # noqa: BLE001 - read below
                answers.append(exc)

        holder = threading.Thread(target=refresh_on_a, daemon=True)
        holder.start()
        deadline = time.monotonic() + 10
        while accounts.refreshes(USER) == 0:  # Garmin rotated the pair for A
            assert time.monotonic() < deadline, "A's refresh never reached Garmin"
            time.sleep(0.02)
        time.sleep(0.5)

        # A legacy worker (worker_full) leases the session on B while A retries its commit.
        outcome: LeaseGrant | Exception
        try:
            outcome = replica_b.leases.lease_session(USER, "legacy-worker", None)
        except GarminUnavailable as exc:
            outcome = exc
        # Released as a sync attempt, so a draining worker moves on to the next user.
        released = read_row(db_b, USER).last_sync_attempt_at is not None

        _let_log_in(admin, "replica_a", allowed=True)
        holder.join(30)
        assert not isinstance(outcome, LeaseGrant), (
            "the worker_full grant gave up waiting on A's claim and handed out the refresh "
            "token A's rotation had already killed: "
            + (
                "dead at Garmin"
                if outcome.tokens.oauth2.refresh_token
                not in set(emulator.live_refresh_tokens(accounts.email(USER)))
                else "still live"
            )
        )
        assert isinstance(outcome, GarminUnavailable)
        assert released, "the lease the grant could not hand out was not released"
        # A stored its rotated pair once the database let it in: nothing was lost.
        row = read_row(db_b, USER)
        assert row.state is SessionState.ACTIVE
        assert row.session_version == version + 1
    finally:
        engine_a.dispose()
        admin.dispose()
