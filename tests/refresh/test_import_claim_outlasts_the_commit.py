"""A token file's import holds the account's one call in flight until its rotated pair is
committed, however long the commit takes (as long as a refresh claim lives).

Found by review: the hold was the gate's default, GARMIN_AUTH_BREAKER_PROBE_TIMEOUT (60 s)
from admission, while the import kept the pair unstored for a Garmin call plus its commit
retries. Once the hold ran out, another replica's retry of the same file was admitted, did
not see the pair (not committed yet) and sent the file's refresh token, which the first
import had rotated away, to Garmin again. Where a reuse kills the newest token too (the
facts file leaves it open: the emulator's reuse_kills_newest), the pair the first import
then stored was dead: the user's session lost.

The first import's commit is held back by an uncommitted INSERT of the user's row (a new
user; PostgreSQL READ COMMITTED lets the other replica read past it), and the service's
clock is moved past the old hold, as 60 s passing would. The retry now waits (the refresh
wait) and answers GarminRateLimited, in flight: retry in 2 s."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import DomainError, GarminRateLimited
from auth_service.domain.models import SessionStatusView
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from garmin_emulator import GarminEmulator
from tests.leases import row_lock_waiters, stored_tokens
from tests.refresh import Replica

pytestmark = pytest.mark.timeout(60)

USER = "review-claim-user"
EMAIL = f"{USER}@example.com"
PROBE_SECONDS = 60.0  # GarminLimitSettings' default (the replicas' gate): the old hold


def _run(
    replicas: tuple[Replica, Replica],
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> tuple[object, object]:
    emulator.add_user(EMAIL, "irrelevant-password")
    token_file = json.dumps(emulator.garminconnect_tokens(EMAIL))
    outcomes: dict[str, object] = {}

    def first() -> None:
        try:
            outcomes["first"] = replicas[0].imports.import_session(
                USER, garminconnect_tokens=token_file
            )
        except DomainError as exc:
            outcomes["first"] = exc

    holder = UnitsOfWork(SqlStore(db_sessionmaker, box), clock)
    with holder() as unit:
        # Another transaction's row insert, not committed yet: the first import's install
        # (INSERT ... ON CONFLICT DO NOTHING) waits on it; plain reads pass it by.
        unit.sessions.lock_or_create(USER, unit.now)
        worker = threading.Thread(target=first)
        worker.start()
        deadline = time.monotonic() + 20
        while not (emulator.di_refresh_count(EMAIL) == 1 and row_lock_waiters(db_sessionmaker) > 0):
            assert time.monotonic() < deadline, "the first import never reached its install"
            time.sleep(0.05)
        # Garmin rotated the file's pair; it is unstored. Time passes beyond the claim.
        clock.advance(PROBE_SECONDS + 1)
        try:
            outcomes["retry"] = replicas[1].imports.import_session(
                USER, garminconnect_tokens=token_file
            )
        except DomainError as exc:
            outcomes["retry"] = exc
    worker.join(40)
    assert not worker.is_alive()
    return outcomes["first"], outcomes["retry"]


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_retry_during_a_long_commit_sends_no_rotated_away_token(
    replicas: tuple[Replica, Replica],
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    first, retry = _run(replicas, emulator, db_sessionmaker, box, clock)

    assert isinstance(first, SessionStatusView), first
    # README: "The refresh is the account's one call in flight on every replica, held until
    # its pair is committed"; the service never sends a refresh token it rotated away.
    assert emulator.refresh_token_reuses(EMAIL) == 0, (
        f"the retry sent the file's refresh token again after the first import rotated it "
        f"(retry answered {type(retry).__name__})"
    )
    # README: the retry waits as long as a refresh waits, then answers "in flight".
    assert isinstance(retry, GarminRateLimited), retry
    assert retry.held_back == "in_flight"


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_retry_during_a_long_commit_keeps_the_session_where_reuse_kills_the_newest(
    replicas: tuple[Replica, Replica],
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    """The facts file leaves open whether reusing a dead refresh token kills the newest one
    (the emulator's reuse_kills_newest). Where it does, the pair the first import stores is
    dead on arrival: the user's only session is lost."""
    emulator.di.reuse_kills_newest = True
    try:
        first, _ = _run(replicas, emulator, db_sessionmaker, box, clock)
    finally:
        emulator.di.reuse_kills_newest = False

    assert isinstance(first, SessionStatusView), first
    stored = stored_tokens(db_sessionmaker, box, USER)
    assert stored is not None
    alive = stored.oauth2.refresh_token in emulator.live_refresh_tokens(EMAIL)
    assert alive, (
        "the stored session's refresh token is dead at Garmin: the import's session is lost"
    )
