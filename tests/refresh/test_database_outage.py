"""A rotated pair is never dropped: the database stops while Garmin answers a refresh, and
the pair lands once it is back. A private PostgreSQL cluster (tests/reliability/cluster.py),
so stopping it touches no other test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, make_url

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
from tests.reliability.cluster import PrivateCluster, migrated_cluster

from . import ASKER, DiAccounts, build_replica, during_next_refresh

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

USER = "outage-user"
DOWN_SECONDS = 3.0


class _Recorder(NoRefreshEvents):
    def __init__(self) -> None:
        self.unstored: list[float] = []

    def rotated_pair_unstored(self, seconds: float) -> None:
        self.unstored.append(seconds)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    with migrated_cluster() as running:
        yield running


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
    cluster: PrivateCluster,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    box: SecretBox,
    clock: FakeClock,
) -> None:
    """Replica A gets the rotated pair from Garmin, then loses the database (its role may no
    longer log in) for longer than a Garmin call's worst case, while replica B still reaches
    it. B must not take the claim over and send the refresh token that rotation killed:
    before, A's claim expired after claim_seconds, B read invalid_grant, found the row at the
    same version and ended the session, and A's pair, stored a moment later, matched
    nothing."""
    admin = create_engine_for(cluster.url)
    engine_a = _engine_of_a_role_of_its_own(admin, cluster.url, "replica_a")
    try:
        db_a, db_b = session_factory(engine_a), session_factory(admin)
        accounts = DiAccounts(emulator, clock, db_b, box)
        accounts.seed(USER, access_in=timedelta(seconds=-5))
        version = read_row(db_b, USER).session_version
        settings = RefreshSettings(claim_seconds=10.0, wait_seconds=1.0, commit_retry_seconds=60.0)
        replica_a = build_replica(db_a, box, upstream, clock, settings)
        replica_b = build_replica(db_b, box, upstream, clock, settings)

        def cut_a_off() -> None:
            _let_log_in(admin, "replica_a", allowed=False)

        answers: list[object] = []

        def refresh_on_a() -> None:
            try:
                with during_next_refresh(emulator, cut_a_off):
                    answers.append(replica_a.refresher.refresh(USER, version, ASKER))
            except Exception as exc:  # noqa: BLE001 - the test reads it below
                answers.append(exc)

        holder = threading.Thread(target=refresh_on_a, daemon=True)
        holder.start()
        deadline = time.monotonic() + 10
        while accounts.refreshes(USER) == 0:  # Garmin rotated the pair for A
            assert time.monotonic() < deadline, "A's refresh never reached Garmin"
            time.sleep(0.02)
        time.sleep(1.0)  # A's first commits fail
        clock.advance(settings.claim_seconds + 5)

        with pytest.raises(GarminUnavailable, match="still refreshing"):
            replica_b.refresher.refresh(USER, version, ASKER)
        assert accounts.reuses(USER) == 0
        assert read_row(db_b, USER).state is SessionState.ACTIVE

        _let_log_in(admin, "replica_a", allowed=True)
        holder.join(30)
        (refreshed,) = answers
        assert isinstance(refreshed, Refreshed), refreshed
        assert refreshed.by_us
        row = read_row(db_b, USER)
        assert (row.state, row.session_version) == (SessionState.ACTIVE, version + 1)
        assert stored_tokens(db_b, box, USER) == refreshed.tokens
        assert (accounts.refreshes(USER), accounts.reuses(USER)) == (1, 0)
    finally:
        engine_a.dispose()
        admin.dispose()


def _engine_of_a_role_of_its_own(admin: Engine, url: str, role: str) -> Engine:
    """An engine on the same database logging in as `role`, which an admin can then cut
    off from the database alone (a replica partitioned from PostgreSQL)."""
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        connection.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    return create_engine_for(make_url(url).set(username=role).render_as_string(False))


def _let_log_in(admin: Engine, role: str, *, allowed: bool) -> None:
    """Refuse `role` new connections and end the ones it has, or let it log in again."""
    with admin.begin() as connection:
        connection.exec_driver_sql(f"ALTER ROLE {role} {'LOGIN' if allowed else 'NOLOGIN'}")
        if not allowed:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %(role)s",
                {"role": role},
            )
