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

import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import DomainError, GarminRateLimited
from auth_service.domain.models import SessionStatusView
from auth_service.domain.policies import RefreshSettings
from garmin_emulator import GarminEmulator
from tests.refresh import Replica
from tests.refresh.partition import Partition

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]

USER = "review-partition-user"
EMAIL = f"{USER}@example.com"
PROBE_SECONDS = 60.0  # GarminLimitSettings' default: the gate's old hold of an import
# The retry waits this long for the first import before it answers "in flight".
SETTINGS = RefreshSettings(claim_seconds=10.0, wait_seconds=3.0)


def _import_cut_off_after_garmin(
    partition: Partition, replica: Replica, emulator: GarminEmulator, token_file: str
) -> tuple[threading.Thread, list[object]]:
    """Replica A imports `token_file` on a thread of its own, its role refused by the
    database as soon as Garmin has the refresh; returns once Garmin rotated the file's pair
    (A's answer, or its error, lands in the list)."""

    def import_on_a() -> object:
        return replica.imports.import_session(USER, garminconnect_tokens=token_file)

    return partition.cut_off_a_once_garmin_has_it(emulator, EMAIL, import_on_a)


def test_a_retry_while_the_first_import_cannot_store_its_pair_sends_no_dead_token(
    partition: Partition, emulator: GarminEmulator, clock: FakeClock
) -> None:
    replica_a, replica_b = partition.replicas(SETTINGS)
    emulator.add_user(EMAIL, "irrelevant-password")
    token_file = json.dumps(emulator.garminconnect_tokens(EMAIL))
    first, answers = _import_cut_off_after_garmin(partition, replica_a, emulator, token_file)
    time.sleep(1.0)  # A's first commits fail
    clock.advance(PROBE_SECONDS + 1)  # the time a slow Garmin plus the retries take

    try:
        retried: object = replica_b.imports.import_session(USER, garminconnect_tokens=token_file)
    except DomainError as exc:
        retried = exc
    reuses = emulator.refresh_token_reuses(EMAIL)

    partition.let_a_back()
    first.join(40)
    (answer,) = answers
    assert isinstance(answer, SessionStatusView), answer
    assert reuses == 0, (
        f"B sent the file's refresh token, which A's import had rotated away, to Garmin "
        f"again; B answered {retried!r}"
    )
    assert isinstance(retried, GarminRateLimited), retried
    assert retried.held_back == "in_flight"


# A's database comes back after this long: longer than the 30 s the import kept its pair for
# before, far shorter than the commit_retry_seconds (600 s) a refresher keeps its own for.
OUTAGE_SECONDS = 36.0


def test_the_imported_pair_lands_after_a_database_outage_a_refresh_survives(
    partition: Partition, emulator: GarminEmulator
) -> None:
    """tests/refresh/test_database_outage.py: "A rotated pair is never dropped: the database
    stops while Garmin answers a refresh, and the pair lands once it is back" (within
    commit_retry_seconds, 600 s). The same for an import's pair. Before, it was dropped after
    30 s, when the file's refresh token was dead at Garmin already: the user's session was
    gone (a retry of the file answered INVALID_ARGUMENT; only a new sign-in helped)."""
    replica_a, _ = partition.replicas(SETTINGS)
    emulator.add_user(EMAIL, "irrelevant-password")
    token_file = json.dumps(emulator.garminconnect_tokens(EMAIL))
    first, answers = _import_cut_off_after_garmin(partition, replica_a, emulator, token_file)
    time.sleep(OUTAGE_SECONDS)
    partition.let_a_back()
    first.join(30)

    (answer,) = answers
    assert isinstance(answer, SessionStatusView), (
        f"the import gave up on the pair Garmin rotated the file into "
        f"({type(answer).__name__}); "
        "the file's refresh token is dead: the user's session is lost"
    )
