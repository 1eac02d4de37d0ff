"""A `garmin-sync-worker --user` run that names dead garth sessions must still sync the users
named after them.

On a replica that has seen no garth exchange accepted since it started, Garmin's 401 to a
dead garth session's exchange is a refusal in doubt (auth_service.upstream.garth.
exchange_refusals): the session is kept and the call answers GARMIN_UNAVAILABLE, for the
grace (GARMIN_AUTH_GARTH_REFUSAL_GRACE) before it ends. It is Garmin's answer about that one
session, not an outage. Before, the worker counted it with the run's Garmin outages: three
such users in a row stopped the run (exit 4, --max-garmin-unavailable), after backoff pauses,
and the users named after them were never synced. Now the service marks the answer ErrorInfo
`scope: user`, and the worker reports that user FAILED and goes on, as for another refusal
about one user.

Both places a doubtful refusal reaches a worker: LeaseSession's refresh before the grant (the
stored access token expired), and RefreshLease in the middle of a sync (the API refused the
access token the grant carried). The real service with its garth adapter, the emulator over
HTTP, the worker in process.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from auth_service.upstream.garth.exchange_refusals import forget_all
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.reliability import SkewedClock
from tests.worker import connect, email_of, make_config, run_worker

pytestmark = pytest.mark.timeout(120)

# Named before the good user, and as many as stop a run (DEFAULT_MAX_GARMIN_UNAVAILABLE).
DEAD = ("dead-1", "dead-2", "dead-3")
GOOD = "zoe"


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _connect_and_revoke(today_replica: object, garmin: GarminEmulator) -> None:
    for user in (*DEAD, GOOD):
        connect(today_replica, garmin, user, activities=2)  # type: ignore[arg-type]
    for user in DEAD:
        garmin.revoke_tokens(email_of(user))  # their exchange and the API answer 401
    # A restart: no replica has seen an exchange accepted, so each 401 is in doubt.
    forget_all()


def _assert_run_goes_on(result: object) -> None:
    outcomes = {user: line["outcome"] for user, line in result.users.items()}  # type: ignore[attr-defined]
    assert outcomes.get(GOOD) == "SYNCED", (
        f"dead garth sessions refused in doubt stopped the run before {GOOD}: {outcomes}, "
        f"exit {result.exit_code}"  # type: ignore[attr-defined]
    )
    assert {outcomes[user] for user in DEAD} == {"FAILED"}, outcomes
    # FAILED users, no Garmin outage (4).
    assert result.exit_code == 1  # type: ignore[attr-defined]


def test_the_service_marks_a_refusal_in_doubt_as_about_the_user(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    today = service_factory.start()
    _connect_and_revoke(today, garmin)
    later = service_factory.start(clock=SkewedClock(timedelta(days=2)))

    refused = expect_failure(
        lambda: later.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id=DEAD[0], holder="h"), role="worker"
        )
    )

    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE")
    assert refused.scope == "user"


def test_dead_garth_sessions_at_the_grant_do_not_stop_a_user_run(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    today = service_factory.start()
    _connect_and_revoke(today, garmin)
    # Two days later: every stored access token has expired, so each grant exchanges first.
    later = service_factory.start(clock=SkewedClock(timedelta(days=2)))

    result = run_worker(
        make_config(later.target, garmin, tmp_path, users=(*DEAD, GOOD), concurrency=1)
    )

    _assert_run_goes_on(result)


def test_dead_garth_sessions_refused_mid_sync_do_not_stop_a_user_run(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    today = service_factory.start()
    _connect_and_revoke(today, garmin)
    # Same day: each grant carries the stored access token, which the API now refuses; the
    # worker's RefreshLease finds the exchange refused in doubt.
    replica = service_factory.start()

    result = run_worker(
        make_config(replica.target, garmin, tmp_path, users=(*DEAD, GOOD), concurrency=1)
    )

    _assert_run_goes_on(result)
