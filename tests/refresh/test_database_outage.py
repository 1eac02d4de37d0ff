"""A rotated pair is never dropped: the database stops while Garmin answers a refresh, and
the pair lands once it is back. A private PostgreSQL cluster (tests/reliability/cluster.py),
so stopping it touches no other test."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.events import NoRefreshEvents
from auth_service.domain.models import SessionState
from auth_service.domain.policies import RefreshSettings
from auth_service.services.session_refresh import Refreshed
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import GarminEmulator
from tests.leases import read_row, stored_tokens
from tests.reliability.cluster import PrivateCluster

from . import ASKER, DiAccounts, build_replica, during_next_refresh
from .partition import Partition

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

USER = "outage-user"
DOWN_SECONDS = 3.0


class _Recorder(NoRefreshEvents):
    def __init__(self) -> None:
        self.unstored: list[float] = []

    def rotated_pair_unstored(self, seconds: float) -> None:
        self.unstored.append(seconds)


def test_the_rotated_pair_lands_after_the_database_returns(
    cluster: PrivateCluster,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    box: SecretBox,
    clock: FakeClock,
) -> None:
    engine = create_engine_for(cluster.url)
    try:
        db = session_factory(engine)
        accounts = DiAccounts(emulator, clock, db, box)
        old = accounts.seed(USER, access_in=timedelta(seconds=-5))
        version = read_row(db, USER).session_version
        events = _Recorder()
        replica = build_replica(db, box, upstream, clock, RefreshSettings(), events)
        restarted = threading.Event()

        def outage() -> None:
            cluster.stop("fast")

            def restart() -> None:
                time.sleep(DOWN_SECONDS)
                cluster.start()
                restarted.set()

            threading.Thread(target=restart, daemon=True).start()

        # The database stops while Garmin holds our refresh; Garmin then rotates the pair.
        with during_next_refresh(emulator, outage, hold=1.0):
            refreshed = replica.refresher.refresh(USER, version, ASKER)

        assert restarted.is_set()
        assert refreshed.by_us
        assert stored_tokens(db, box, USER) == refreshed.tokens
        assert refreshed.tokens.oauth2.refresh_token != old.oauth2.refresh_token
        assert accounts.refreshes(USER) == 1
        assert accounts.reuses(USER) == 0
        assert read_row(db, USER).session_version == version + 1
        # The pair lived in memory only for the rest of the outage.
        assert len(events.unstored) == 1
        assert events.unstored[0] > 0.5
    finally:
        engine.dispose()


def test_a_claim_outlives_a_holder_that_cannot_store_its_pair(
    partition: Partition, emulator: GarminEmulator, box: SecretBox, clock: FakeClock
) -> None:
    """Replica A gets the rotated pair from Garmin, then loses the database (its role may no
    longer log in) for longer than a Garmin call's worst case, while replica B still reaches
    it. B must not take the claim over and send the refresh token that rotation killed:
    before, A's claim expired after claim_seconds, B read invalid_grant, found the row at the
    same version and ended the session, and A's pair, stored a moment later, matched
    nothing."""
    db_b = partition.db_b
    accounts = partition.accounts(emulator)
    accounts.seed(USER, access_in=timedelta(seconds=-5))
    version = read_row(db_b, USER).session_version
    settings = RefreshSettings(claim_seconds=10.0, wait_seconds=1.0, commit_retry_seconds=60.0)
    replica_a, replica_b = partition.replicas(settings)

    holder, answers = partition.cut_off_a_once_garmin_has_it(
        emulator, accounts.email(USER), lambda: replica_a.refresher.refresh(USER, version, ASKER)
    )
    time.sleep(1.0)  # A's first commits fail
    clock.advance(settings.claim_seconds + 5)

    with pytest.raises(GarminUnavailable, match="still refreshing"):
        replica_b.refresher.refresh(USER, version, ASKER)
    assert accounts.reuses(USER) == 0
    assert read_row(db_b, USER).state is SessionState.ACTIVE

    partition.let_a_back()
    holder.join(30)
    (refreshed,) = answers
    assert isinstance(refreshed, Refreshed), refreshed
    assert refreshed.by_us
    row = read_row(db_b, USER)
    assert (row.state, row.session_version) == (SessionState.ACTIVE, version + 1)
    assert stored_tokens(db_b, box, USER) == refreshed.tokens
    assert (accounts.refreshes(USER), accounts.reuses(USER)) == (1, 0)
