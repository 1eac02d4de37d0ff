"""Dead garth sessions on a replica that has seen no exchange accepted since it started (a
restart; the default DI login flow makes garth exchanges rare; or every garth session left
is dead): Garmin's 401 to their exchange is a refusal in doubt (auth_service.upstream.garth.
exchange_refusals), which keeps the session and answers LeaseSession GARMIN_UNAVAILABLE.

Before, LeaseNextSession answered it GARMIN_UNAVAILABLE too: three such users in a row stop
a worker's run (sync_worker.control, max_garmin_unavailable = 3), and the DI users behind
them were never synced. And the gate settled the 401 as "unanswered": the oauth_exchange
breaker's probe was handed on, never closed, though Garmin had answered.

Real garth adapter and DI provider, emulator over HTTP, both databases (review s25).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.audit import AuditedRpc
from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRefusalInDoubt, GarminUnavailable
from auth_service.domain.garmin_limits import BreakerPhase, GarminEndpoint, GarminLimitSettings
from auth_service.domain.models import LeaseGrant, SessionState
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.leases import LeaseService
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from auth_service.upstream.garth.exchange_refusals import forget_all
from garmin_emulator import EXCHANGE_PATH, GarminEmulator
from tests.leases import GarminAccounts, read_row
from tests.refresh import DiAccounts

pytestmark = pytest.mark.timeout(120)

# Named so that they come first in the due order (never synced: by user id).
DEAD = ("a-dead-1", "a-dead-2", "a-dead-3")
DI_USERS = ("b-di-1", "b-di-2")
# sync_worker.control.DEFAULT_MAX_GARMIN_UNAVAILABLE: the run stops after this many in a row.
WORKER_MAX_UNAVAILABLE = 3
EXCHANGE = GarminEndpoint.OAUTH_EXCHANGE


def _seed_dead_garth_sessions(accounts: GarminAccounts) -> None:
    for user_id in DEAD:
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
