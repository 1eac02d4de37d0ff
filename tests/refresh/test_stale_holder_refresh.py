"""A RefreshLease whose lease ends while it waits (for a refresh slot, here) rotates nothing:
the holder that took the user over keeps a live refresh token.

LeaseRefresh.refresh_lease checked the lease once, before SessionRefresher.refresh; the
refresher then waited for one of GARMIN_AUTH_REFRESH_CONCURRENCY slots (a refresh storm
queues there for seconds) and claimed the row by session version alone. Worker A's lease
expired meanwhile, legacy worker B (worker_full) took the user over and was handed the whole
session, and A's refresh then rotated B's refresh token away at Garmin. The claim now holds
only while the asker's lease is live (RefreshRepository.claim held_by), and the refresher
answers LeaseLost once it is not.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import LeaseLost
from auth_service.domain.models import LeaseGrant
from auth_service.domain.policies import RefreshSettings
from auth_service.services.lease_refresh import LeaseRefresh
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import GarminEmulator
from tests.leases import read_row, stored_tokens
from tests.refresh import ASKER, DiAccounts, build_replica, during_next_refresh

pytestmark = pytest.mark.timeout(120)

# One refresh to Garmin at a time on this replica (GARMIN_AUTH_REFRESH_CONCURRENCY=1).
SETTINGS = RefreshSettings(concurrency=1, claim_seconds=60.0, wait_seconds=30.0)


def test_refresh_lease_of_a_lease_taken_over_meanwhile_does_not_rotate_the_new_holders_session(
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    upstream: UpstreamRouter,
    clock: FakeClock,
    emulator: GarminEmulator,
    accounts: DiAccounts,
) -> None:
    replica = build_replica(db_sessionmaker, box, upstream, clock, SETTINGS)
    lease_refresh = LeaseRefresh(
        UnitsOfWork(SqlStore(db_sessionmaker, box), clock),
        replica.refresher,
    )
    accounts.seed("stale-user")
    accounts.seed("busy-user")
    busy_version = read_row(db_sessionmaker, "busy-user").session_version

    # Worker A holds stale-user for 5 s; its token is fine, so no refresh at the grant.
    old = replica.leases.lease_session(
        "stale-user", "worker-a", timedelta(seconds=5), with_refresh_token=False
    )
    assert old.lease.lease_id is not None
    answers: list[object] = []
    taken_over: list[LeaseGrant] = []

    def refresh_lease_of_a() -> None:
        try:
            answers.append(
                lease_refresh.refresh_lease(old.lease.lease_id or "", old.status.session_version)
            )
        except Exception as exc:  # noqa: BLE001 - the answer is what the test looks at
            answers.append(exc)

    worker_a = threading.Thread(target=refresh_lease_of_a)

    def while_the_slot_is_busy() -> None:
        # A's Garmin 401 -> RefreshLease; it queues behind the busy slot.
        worker_a.start()
        time.sleep(0.3)
        # A stalls past its ttl; legacy worker B (worker_full) takes the user over and is
        # handed the whole session, refresh token included.
        clock.advance(10)
        taken_over.append(
            replica.leases.lease_session(
                "stale-user", "worker-b", timedelta(minutes=5), with_refresh_token=True
            )
        )

    with during_next_refresh(emulator, while_the_slot_is_busy, hold=1.5):
        replica.refresher.refresh("busy-user", busy_version, ASKER)
    worker_a.join(timeout=30)

    (new_grant,) = taken_over
    assert isinstance(answers[0], LeaseLost)  # A's lease is dead: it is told so
    # ... and its dead lease changed nothing: B's refresh token is still the session's.
    stored = stored_tokens(db_sessionmaker, box, "stale-user")
    assert stored is not None
    assert accounts.refreshes("stale-user") == 0
    assert stored.oauth2.refresh_token == new_grant.tokens.oauth2.refresh_token
