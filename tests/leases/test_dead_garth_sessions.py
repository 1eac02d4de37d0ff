"""Dead garth sessions on a replica that has seen no exchange accepted since it started (a
restart; the default DI login flow makes garth exchanges rare; or every garth session left
is dead): Garmin's 401 to their exchange is a refusal in doubt (auth_service.upstream.garth.
exchange_refusals), which keeps the session and answers LeaseSession GARMIN_UNAVAILABLE.

Before, LeaseNextSession answered it GARMIN_UNAVAILABLE too: three such users in a row stop
a worker's run (sync_worker.control, max_garmin_unavailable = 3), and the DI users behind
them were never synced. And the gate settled the 401 as "unanswered": the oauth_exchange
breaker's probe was handed on, never closed, though Garmin had answered.

And such a session was kept for ever, asked about at Garmin at every grant, its user never
told to sign in again (once every garth session left is dead, around March 2027, no exchange
is ever accepted). Now the row keeps when Garmin first refused the session in doubt since its
tokens last changed (a restart forgets nothing of it; new tokens clear it), and a doubtful
refusal GARMIN_AUTH_GARTH_REFUSAL_GRACE (7 days) after that ends the session as a believed
401 does.

Real garth adapter and DI provider, emulator over HTTP, both databases (review s25).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.audit import AuditedRpc
from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import (
    GarminRefusalInDoubt,
    GarminSessionRejected,
    GarminUnavailable,
)
from auth_service.domain.garmin_limits import BreakerPhase, GarminEndpoint, GarminLimitSettings
from auth_service.domain.models import LeaseGrant, SessionState
from auth_service.domain.policies import RefreshSettings
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.leases import LeaseService
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from auth_service.storage.models import GarminAuditEvent
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from auth_service.upstream.garth.exchange_refusals import forget_all
from garmin_emulator import EXCHANGE_PATH, GarminEmulator
from tests.leases import GarminAccounts, build_service, read_row, refused_consumer_garth
from tests.refresh import DiAccounts

from .conftest import CONSUMER_KEY

pytestmark = pytest.mark.timeout(120)

# Named so that they come first in the due order (never synced: by user id).
DEAD = ("a-dead-1", "a-dead-2", "a-dead-3")
DI_USERS = ("b-di-1", "b-di-2")
# sync_worker.control.DEFAULT_MAX_GARMIN_UNAVAILABLE: the run stops after this many in a row.
WORKER_MAX_UNAVAILABLE = 3
EXCHANGE = GarminEndpoint.OAUTH_EXCHANGE
GRACE = timedelta(seconds=RefreshSettings().garth_refusal_grace_seconds)
# Past any garth access token's life: the next grant exchanges again.
TOKEN_LIFE = timedelta(days=2)


def _seed_dead_garth_sessions(accounts: GarminAccounts, users: tuple[str, ...] = DEAD) -> None:
    for user_id in users:
        accounts.seed(user_id, timedelta(seconds=1))  # due for an exchange at the grant
        accounts.revoke(user_id)  # Garmin revoked them: their exchange answers 401


def _worker_run(service: LeaseService, clock: FakeClock) -> tuple[list[str], int]:
    """What sync_worker's --all loop does: LeaseNextSession until nothing is due, each synced
    user's release carried by the next call; it gives up after WORKER_MAX_UNAVAILABLE
    GARMIN_UNAVAILABLE answers in a row. The users synced, and the unavailable answers."""
    synced: list[str] = []
    unavailable = 0
    held: LeaseGrant | None = None
    while unavailable < WORKER_MAX_UNAVAILABLE:
        try:
            if held is None:
                grant = service.lease_next_session("worker", None, None)
            else:
                _, grant = service.release_and_lease_next_checked(
                    held.lease.lease_id, clock.now(), "worker", None, None
                )
        except GarminUnavailable:
            unavailable += 1
            continue
        finally:
            held = None  # released by the call, whatever it answered
        if grant is None:
            break
        synced.append(grant.lease.user_id)
        held = grant
    return synced, unavailable


def test_a_worker_run_skips_dead_garth_sessions_and_syncs_the_users_behind_them(
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    service: LeaseService,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    _seed_dead_garth_sessions(accounts)
    di = DiAccounts(emulator, clock, db_sessionmaker, box)
    for user_id in DI_USERS:
        di.seed(user_id)
    forget_all()  # the replica restarted (a deploy): no exchange accepted since
    clock.advance(2)

    synced, unavailable = _worker_run(service, clock)

    # Before: three GARMIN_UNAVAILABLE answers, the run stopped, nobody synced.
    assert (synced, unavailable) == (list(DI_USERS), 0)
    assert emulator.request_count(EXCHANGE_PATH) == len(DEAD)  # each asked once
    for user_id in DEAD:
        row = read_row(db_sessionmaker, user_id)
        # Kept (the refusal is in doubt), and its skip counts as the run's attempt on it.
        assert row.state is SessionState.ACTIVE
        assert row.last_sync_attempt_at is not None
        assert row.last_synced_at is None
    # The user's own lease still answers the documented "try later".
    with pytest.raises(GarminUnavailable):
        service.lease_session(DEAD[0], "worker", None)


def _half_open_exchange_breaker(db: sessionmaker[Session], clock: FakeClock) -> None:
    """The oauth_exchange breaker opened by 429s, its wait over: the next call probes."""
    with db.begin() as session:
        limits = SqlGarminLimitRepository(session)
        limits.count_rate_limited(EXCHANGE, clock.now(), timedelta(seconds=60))
        limits.open_breaker(EXCHANGE, clock.now() - timedelta(seconds=1))
    assert _exchange_phase(db, clock) is BreakerPhase.HALF_OPEN


def _exchange_phase(db: sessionmaker[Session], clock: FakeClock) -> BreakerPhase:
    with db() as session:
        (breaker,) = SqlGarminLimitRepository(session).breakers((EXCHANGE,))
    return breaker.phase(clock.now())


def test_a_refusal_in_doubt_closes_the_exchange_breaker_it_probed(
    accounts: GarminAccounts,
    service: LeaseService,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    _seed_dead_garth_sessions(accounts)
    forget_all()
    clock.advance(2)
    _half_open_exchange_breaker(db_sessionmaker, clock)

    with pytest.raises(GarminUnavailable):
        service.lease_session(DEAD[0], "worker", None)  # the probe, refused in doubt

    # Garmin answered it: the endpoint works. Before: still half-open, the probe handed on
    # as if Garmin had not answered.
    assert _exchange_phase(db_sessionmaker, clock) is BreakerPhase.CLOSED


def test_the_gate_settles_a_refusal_in_doubt_as_answered(
    db_sessionmaker: sessionmaker[Session], box: SecretBox, clock: FakeClock
) -> None:
    # The settle of every call made through GarminGate.calling (an imported garth token
    # file's refresh is one).
    gate = GarminGate(UnitsOfWork(SqlStore(db_sessionmaker, box), clock), GarminLimitSettings())
    _half_open_exchange_breaker(db_sessionmaker, clock)

    with (
        pytest.raises(GarminRefusalInDoubt),
        gate.calling(None, (EXCHANGE,), AuditedRpc.IMPORT_SESSION),
    ):
        raise GarminRefusalInDoubt("Garmin refused the token exchange (HTTP 401)")

    assert _exchange_phase(db_sessionmaker, clock) is BreakerPhase.CLOSED


# --- the grace -------------------------------------------------------------------------


def _first_refusal(db: sessionmaker[Session], user_id: str) -> datetime | None:
    return read_row(db, user_id).first_doubtful_refusal_at


def _outcomes(db: sessionmaker[Session], user_id: str) -> list[str]:
    with db() as session:
        return list(
            session.scalars(
                select(GarminAuditEvent.outcome_reason)
                .where(GarminAuditEvent.user_id == user_id)
                .order_by(GarminAuditEvent.id)
            )
        )


def test_a_dead_garth_session_ends_once_refused_in_doubt_past_the_grace_restarts_or_not(
    accounts: GarminAccounts,
    service: LeaseService,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    user_id = DEAD[0]
    _seed_dead_garth_sessions(accounts, (user_id,))
    forget_all()  # a restart: no exchange accepted since
    clock.advance(2)
    with pytest.raises(GarminUnavailable):
        service.lease_session(user_id, "worker", None)
    first = clock.now()
    assert _first_refusal(db_sessionmaker, user_id) == first

    # Within the grace, and across restarts: kept, the first refusal remembered (not moved).
    for step in (GRACE / 2, GRACE / 2 - timedelta(minutes=1)):
        clock.advance(step.total_seconds())
        forget_all()
        with pytest.raises(GarminUnavailable):
            service.lease_session(user_id, "worker", None)
        row = read_row(db_sessionmaker, user_id)
        assert (row.state, row.first_doubtful_refusal_at) == (SessionState.ACTIVE, first)

    # The grace is over: the next refusal in doubt ends it, as a believed 401 does.
    clock.advance(60)
    forget_all()
    with pytest.raises(GarminSessionRejected):
        service.lease_session(user_id, "worker", None)
    row = read_row(db_sessionmaker, user_id)
    assert row.state is SessionState.AUTH_EXPIRED
    assert row.session_ciphertext is None
    assert row.first_doubtful_refusal_at is None
    assert row.invalidated_at == clock.now()
    assert _outcomes(db_sessionmaker, user_id)[-1] == "SESSION_NOT_ACTIVE"


def test_new_tokens_clear_the_evidence_of_refusals_in_doubt(
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    service: LeaseService,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    user_id = "good-1"
    accounts.seed(user_id, timedelta(seconds=1))  # a good session, due for an exchange
    # A replica with a consumer Garmin refuses: its every 401 is in doubt.
    refused = refused_consumer_garth(emulator, CONSUMER_KEY)
    misconfigured = build_service(db_sessionmaker, box, refused, clock)
    clock.advance(2)
    with pytest.raises(GarminUnavailable):
        misconfigured.lease_session(user_id, "worker", None)
    assert _first_refusal(db_sessionmaker, user_id) == clock.now()

    # A replica whose consumer works refreshes the session: new tokens, no evidence left.
    grant = service.lease_session(user_id, "worker", None)
    service.release_lease(grant.lease.lease_id, clock.now())
    assert _first_refusal(db_sessionmaker, user_id) is None

    # Refused in doubt again past the first refusal's grace: kept, the grace starts again.
    clock.advance((GRACE + TOKEN_LIFE).total_seconds())
    with pytest.raises(GarminUnavailable):
        misconfigured.lease_session(user_id, "worker", None)
    row = read_row(db_sessionmaker, user_id)
    assert (row.state, row.first_doubtful_refusal_at) == (SessionState.ACTIVE, clock.now())


def test_a_zero_grace_never_ends_a_session_on_refusals_in_doubt(
    accounts: GarminAccounts,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    service = build_service(
        db_sessionmaker,
        box,
        accounts.upstream,
        clock,
        refresh=RefreshSettings(garth_refusal_grace_seconds=0),
    )
    _seed_dead_garth_sessions(accounts, DEAD[:1])
    forget_all()
    for _ in range(3):
        clock.advance(GRACE.total_seconds())
        with pytest.raises(GarminUnavailable):
            service.lease_session(DEAD[0], "worker", None)
    assert read_row(db_sessionmaker, DEAD[0]).state is SessionState.ACTIVE


def test_worker_runs_end_dead_garth_sessions_after_the_grace(
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    service: LeaseService,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    _seed_dead_garth_sessions(accounts, DEAD)
    di = DiAccounts(emulator, clock, db_sessionmaker, box)
    for user_id in DI_USERS:
        di.seed(user_id, access_in=timedelta(days=30))  # no refresh in these runs
    clock.advance(2)

    # A run a day, each on a freshly restarted replica: nothing ever accepted.
    for _day in range(int(GRACE / timedelta(days=1)) + 1):
        forget_all()
        synced, unavailable = _worker_run(service, clock)
        assert (synced, unavailable) == (list(DI_USERS), 0)
        clock.advance(timedelta(days=1).total_seconds())

    states = {user_id: read_row(db_sessionmaker, user_id).state for user_id in DEAD}
    assert set(states.values()) == {SessionState.AUTH_EXPIRED}, states


def _hourly_run(service: LeaseService, clock: FakeClock) -> list[str]:
    """A worker run with a one-hour minimum interval: LeaseNextSession until nothing is due
    (each synced user's release carried by the next call)."""
    interval = timedelta(hours=1)
    synced: list[str] = []
    grant = service.lease_next_session("worker", None, interval)
    while grant is not None:
        synced.append(grant.lease.user_id)
        _, grant = service.release_and_lease_next_checked(
            grant.lease.lease_id, clock.now(), "worker", None, interval
        )
    return synced


def test_more_dead_garth_sessions_than_a_call_skips_do_not_hide_the_users_behind_them(
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    service: LeaseService,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    """A call skips at most MAX_REJECTED_SKIPS (5) sessions that ask Garmin, then answers
    "nothing due", which ends the run. Before, dead garth sessions (never synced: at the head
    of the due order) were due again once the worker's interval had passed: 40 of them used
    up every hourly run, and the DI users behind them were never synced (review s26). Now a
    session refused in doubt comes after every other due one, and asks Garmin again only
    GARTH_IN_DOUBT_RETRY (6 h) after its last attempt."""
    dead = tuple(f"a-dead-{n:02}" for n in range(40))
    _seed_dead_garth_sessions(accounts, dead)
    di = DiAccounts(emulator, clock, db_sessionmaker, box)
    for user_id in DI_USERS:
        di.seed(user_id, access_in=timedelta(days=30))
    forget_all()  # a restart: every refusal is in doubt
    clock.advance(2)

    runs = []
    for _hour in range(24):
        runs.append(_hourly_run(service, clock))
        clock.advance(timedelta(hours=1).total_seconds())

    # Each dead session is asked about once before the DI users come first (8 runs of 5),
    # then the DI users are synced whenever due: every other hourly run with a 1 h interval.
    first = next(n for n, run in enumerate(runs) if run)
    assert first == len(dead) // 5, runs
    assert all(run == list(DI_USERS) for run in runs[first::2]), runs
    # At most once per 6 h each: 24 h of runs asked Garmin 4 times per dead session at most.
    assert len(dead) <= emulator.request_count(EXCHANGE_PATH) <= 4 * len(dead)
    assert {read_row(db_sessionmaker, u).state for u in dead} == {SessionState.ACTIVE}
