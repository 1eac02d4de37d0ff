"""A replica that refreshed a token file at Garmin and then lost the database keeps the
rotated pair and retries its commit as long as a refresh would (commit_retry_seconds), and
holds the account's call meanwhile, as the refresher's own test does
(tests/refresh/test_database_outage.py::test_a_claim_outlives_a_holder_that_cannot_store_its_pair).

Found by review. Before: the account's hold ran out after 60 s (GARMIN_AUTH_BREAKER_PROBE_
TIMEOUT), and the client's retry of the same file on the other replica sent the file's
refresh token, which the first import had killed, to Garmin again; and the import dropped
its pair after 30 s of outage (a refresh keeps its own for 10 minutes), which lost the
user's session (the file's refresh token was dead by then).

Replica A's role is refused by a private PostgreSQL cluster (tests/reliability/cluster.py)
after Garmin answered A's refresh."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import DomainError, GarminRateLimited
from auth_service.domain.models import SessionStatusView
from auth_service.domain.policies import RefreshSettings
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import GarminEmulator
from tests.refresh import Replica, build_replica, during_next_refresh
from tests.refresh.test_database_outage import _engine_of_a_role_of_its_own, _let_log_in
from tests.reliability.cluster import PrivateCluster, migrated_cluster

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]

USER = "review-partition-user"
EMAIL = f"{USER}@example.com"
PROBE_SECONDS = 60.0  # GarminLimitSettings' default: the gate's old hold of an import
# The retry waits this long for the first import before it answers "in flight".
SETTINGS = RefreshSettings(claim_seconds=10.0, wait_seconds=3.0)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    with migrated_cluster() as running:
        yield running


def _import_cut_off_after_garmin(
    replica: Replica,
    admin: Engine,
    emulator: GarminEmulator,
    token_file: str,
    answers: list[object],
) -> threading.Thread:
    """Replica A imports `token_file` on a thread of its own, its role refused by the
    database as soon as Garmin has the refresh; returns once Garmin rotated the file's pair
    (A's answer, or its error, lands in `answers`)."""

    def import_on_a() -> None:
        try:
            with during_next_refresh(
                emulator, lambda: _let_log_in(admin, "replica_a", allowed=False)
            ):
                answers.append(
                    replica.imports.import_session(USER, garminconnect_tokens=token_file)
                )
        except Exception as exc:  # noqa: BLE001 - read by the test
            answers.append(exc)

    first = threading.Thread(target=import_on_a, daemon=True)
    first.start()
    deadline = time.monotonic() + 10
    while emulator.di_refresh_count(EMAIL) == 0:  # Garmin rotated the file's pair for A
        assert time.monotonic() < deadline, "A's refresh never reached Garmin"
        time.sleep(0.02)
    return first


def test_a_retry_while_the_first_import_cannot_store_its_pair_sends_no_dead_token(
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
        replica_a = build_replica(db_a, box, upstream, clock, SETTINGS)
        replica_b = build_replica(db_b, box, upstream, clock, SETTINGS)
        emulator.add_user(EMAIL, "irrelevant-password")
        token_file = json.dumps(emulator.garminconnect_tokens(EMAIL))
        answers: list[object] = []
        first = _import_cut_off_after_garmin(replica_a, admin, emulator, token_file, answers)
        time.sleep(1.0)  # A's first commits fail
        clock.advance(PROBE_SECONDS + 1)  # the time a slow Garmin plus the retries take

        try:
            retried: object = replica_b.imports.import_session(
                USER, garminconnect_tokens=token_file
            )
        except DomainError as exc:
            retried = exc
        reuses = emulator.refresh_token_reuses(EMAIL)

        _let_log_in(admin, "replica_a", allowed=True)
        first.join(40)
        (answer,) = answers
        assert isinstance(answer, SessionStatusView), answer
        assert reuses == 0, (
            f"B sent the file's refresh token, which A's import had rotated away, to Garmin "
            f"again; B answered {retried!r}"
        )
        assert isinstance(retried, GarminRateLimited), retried
        assert retried.held_back == "in_flight"
    finally:
        engine_a.dispose()
        admin.dispose()


# A's database comes back after this long: longer than the 30 s the import kept its pair for
# before, far shorter than the commit_retry_seconds (600 s) a refresher keeps its own for.
OUTAGE_SECONDS = 36.0


def test_the_imported_pair_lands_after_a_database_outage_a_refresh_survives(
    cluster: PrivateCluster,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    box: SecretBox,
    clock: FakeClock,
) -> None:
    """tests/refresh/test_database_outage.py: "A rotated pair is never dropped: the database
    stops while Garmin answers a refresh, and the pair lands once it is back" (within
    commit_retry_seconds, 600 s). The same for an import's pair. Before, it was dropped after
    30 s, when the file's refresh token was dead at Garmin already: the user's session was
    gone (a retry of the file answered INVALID_ARGUMENT; only a new sign-in helped)."""
    admin = create_engine_for(cluster.url)
    engine_a = _engine_of_a_role_of_its_own(admin, cluster.url, "replica_a")
    try:
        db_a = session_factory(engine_a)
        replica_a = build_replica(db_a, box, upstream, clock, SETTINGS)
        emulator.add_user(EMAIL, "irrelevant-password")
        token_file = json.dumps(emulator.garminconnect_tokens(EMAIL))
        answers: list[object] = []
        first = _import_cut_off_after_garmin(replica_a, admin, emulator, token_file, answers)
        time.sleep(OUTAGE_SECONDS)
        _let_log_in(admin, "replica_a", allowed=True)
        first.join(30)

        (answer,) = answers
        assert isinstance(answer, SessionStatusView), (
            f"the import gave up on the pair Garmin rotated the file into "
            f"({type(answer).__name__}); "
            "the file's refresh token is dead: the user's session is lost"
        )
    finally:
        engine_a.dispose()
        admin.dispose()
