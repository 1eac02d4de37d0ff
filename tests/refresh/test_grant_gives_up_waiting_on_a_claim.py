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

import time
from datetime import timedelta

import pytest

from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.models import LeaseGrant, SessionState
from auth_service.domain.policies import RefreshSettings
from garmin_emulator import GarminEmulator
from tests.leases import read_row
from tests.refresh import ASKER
from tests.refresh.partition import Partition

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

USER = "grant-gives-up"


def test_a_worker_full_grant_that_stops_waiting_hands_out_no_dying_refresh_token(
    partition: Partition, emulator: GarminEmulator
) -> None:
    db_b = partition.db_b
    accounts = partition.accounts(emulator)
    # Access token good for 20 h; refresh token inside keep-alive's window.
    accounts.seed(USER, refresh_in=timedelta(days=3))
    version = read_row(db_b, USER).session_version
    # As configured: waiters give up 10 s after the Garmin call's worst case (scaled
    # down); the claim outlives the commit retry.
    settings = RefreshSettings(claim_seconds=2.0, wait_seconds=3.0, commit_retry_seconds=60.0)
    replica_a, replica_b = partition.replicas(settings)
    holder, _ = partition.cut_off_a_once_garmin_has_it(
        emulator, accounts.email(USER), lambda: replica_a.refresher.refresh(USER, version, ASKER)
    )
    time.sleep(0.5)

    # A legacy worker (worker_full) leases the session on B while A retries its commit.
    outcome: LeaseGrant | Exception
    try:
        outcome = replica_b.leases.lease_session(USER, "legacy-worker", None)
    except GarminUnavailable as exc:
        outcome = exc
    # Released as a sync attempt, so a draining worker moves on to the next user.
    released = read_row(db_b, USER).last_sync_attempt_at is not None

    partition.let_a_back()
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
