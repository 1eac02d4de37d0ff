"""A token file's import settles its half-open breaker probe as soon as Garmin answers, not after
its pair is committed. Found by review (df6ff49, bfcc0e3); what it found, before the fix:

GarminGate.calling settles the admission (closes the probed breakers, releases the account's
call) when its block ends, and SessionImport._refresh_and_install runs the commit of the
rotated pair (commit_retried, up to commit_retry_seconds, 10 min) inside that block. The
refresher answers the gate right after Garmin's answer, before its commit; the import does
not. So when an import is the probe of a half-open di_token breaker:

- after Garmin has answered it, every other account's refresh (grants, RefreshLease,
  keep-alive) is still refused GARMIN_RATE_LIMITED breaker_open while the import's commit is
  slow (README: "an answer closes the breaker and calls resume at once");
- once the probe's own hold (GARMIN_AUTH_BREAKER_PROBE_TIMEOUT) ran out during that commit,
  another call probes; when Garmin answers it 429 the breaker opens again, and the import's
  late settle then closes it (close_breaker is unconditional): calls go to an endpoint that
  is rate-limiting every account.

The import's commit is held back by an uncommitted INSERT of the user's row (a new user;
PostgreSQL lets other transactions read past it), as in
tests/refresh/test_import_claim_outlasts_the_commit.py; the service's clock is moved past the
probe's hold as 60 s passing would."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import DomainError, GarminRateLimited
from auth_service.domain.garmin_limits import BreakerPhase, GarminEndpoint, GarminLimitSettings
from auth_service.domain.models import SessionStatusView
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from auth_service.storage.models import GarminEndpointBreaker
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row, row_lock_waiters
from tests.refresh import ASKER, DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)

USER = "review-probe-import"
EMAIL = f"{USER}@example.com"
OTHER = "review-probe-other"
PROBE_SECONDS = GarminLimitSettings().probe_seconds  # the replicas' gate: the default
THRESHOLD = GarminLimitSettings().breaker_threshold
POSTGRES_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]
)


def _phase(db: sessionmaker[Session], clock: FakeClock) -> BreakerPhase:
    with db() as session:
        breakers = SqlGarminLimitRepository(session).breakers((GarminEndpoint.DI_TOKEN,))
    return breakers[0].phase(clock.now()) if breakers else BreakerPhase.CLOSED


def _half_open(db: sessionmaker[Session], clock: FakeClock) -> None:
    """The di_token breaker opened by earlier 429s, its wait over: the next call probes."""
    now = clock.now()
    with db.begin() as session:
        limits = SqlGarminLimitRepository(session)
        limits.count_rate_limited(GarminEndpoint.DI_TOKEN, now, timedelta(seconds=60))
        limits.open_breaker(GarminEndpoint.DI_TOKEN, now - timedelta(seconds=1))
    assert _phase(db, clock) is BreakerPhase.HALF_OPEN


def _rate_limited_calls_in_window(db: sessionmaker[Session], clock: FakeClock, calls: int) -> None:
    with db.begin() as session:
        session.execute(
            update(GarminEndpointBreaker)
            .where(GarminEndpointBreaker.endpoint == GarminEndpoint.DI_TOKEN.value)
            .values(window_started_at=clock.now(), rate_limited_calls=calls)
        )


@contextmanager
def _import_answered_but_not_committed(
    replica: Replica,
    emulator: GarminEmulator,
    db: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
    outcome: dict[str, object],
) -> Iterator[None]:
    """Import a fresh token file of USER on `replica`; inside the block Garmin has answered
    the import's refresh and its commit waits. The commit lands when the block ends."""
    emulator.add_user(EMAIL, "irrelevant-password")
    token_file = json.dumps(emulator.garminconnect_tokens(EMAIL))

    def run() -> None:
        try:
            outcome["import"] = replica.imports.import_session(
                USER, garminconnect_tokens=token_file
            )
        except DomainError as exc:
            outcome["import"] = exc

    holder = UnitsOfWork(SqlStore(db, box), clock)
    worker = threading.Thread(target=run)
    with holder() as unit:
        unit.sessions.lock_or_create(USER, unit.now)  # uncommitted: the install waits on it
        worker.start()
        deadline = time.monotonic() + 20
        while not (emulator.di_refresh_count(EMAIL) == 1 and row_lock_waiters(db) > 0):
            assert time.monotonic() < deadline, "the import never reached its install"
            time.sleep(0.05)
        yield
    worker.join(30)
    assert not worker.is_alive()


@POSTGRES_ONLY
def test_garmins_answer_to_an_imports_probe_lets_other_accounts_refresh(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    accounts.seed(OTHER)
    version = read_row(db_sessionmaker, OTHER).session_version
    _half_open(db_sessionmaker, clock)
    outcome: dict[str, object] = {}
    refused: GarminRateLimited | None = None

    with _import_answered_but_not_committed(
        replicas[0], emulator, db_sessionmaker, box, clock, outcome
    ):
        # Garmin answered the import's call (its probe): the endpoint works.
        try:
            replicas[1].refresher.refresh(OTHER, version, ASKER)
        except GarminRateLimited as exc:
            refused = exc

    assert isinstance(outcome["import"], SessionStatusView), outcome["import"]
    assert refused is None, (
        f"another account's refresh was refused ({refused.held_back}: {refused}) after Garmin "
        "had answered the import's probe: the breaker stays half-open with its probe out "
        "until the import's commit lands"
    )


@POSTGRES_ONLY
def test_an_imports_late_settle_does_not_close_a_breaker_that_opened_again(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    accounts.seed(OTHER)
    version = read_row(db_sessionmaker, OTHER).session_version
    _half_open(db_sessionmaker, clock)
    outcome: dict[str, object] = {}

    with _import_answered_but_not_committed(
        replicas[0], emulator, db_sessionmaker, box, clock, outcome
    ):
        # The import's commit takes longer than the probe's hold. Meanwhile Garmin goes on
        # answering 429 to other accounts: one short of the threshold in this window, then
        # another account's refresh meets the 429 that opens the breaker for every account
        # (as the probe here; the threshold's 429 once the import has closed the breaker).
        clock.advance(PROBE_SECONDS + 1)
        _rate_limited_calls_in_window(db_sessionmaker, clock, THRESHOLD - 1)
        emulator.fail_next(DI_TOKEN_PATH, 429, retry_after=600)
        with pytest.raises(GarminRateLimited):
            replicas[1].refresher.refresh(OTHER, version, ASKER)
        assert _phase(db_sessionmaker, clock) is BreakerPhase.OPEN

    assert isinstance(outcome["import"], SessionStatusView), outcome["import"]
    phase = _phase(db_sessionmaker, clock)
    assert phase is BreakerPhase.OPEN, (
        f"the di_token breaker is {phase.value} right after Garmin's 429 opened it for 600 s: "
        "the import's settle, after its slow commit, closed it"
    )
