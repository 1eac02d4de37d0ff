"""A session that failed once is still refreshed before it dies, whatever backlog of healthy
sessions keep-alive has (policies.keepalive_last_stretch).

keepalive_retry_at promises "no run of failures can leave it to die unrefreshed" (it makes the
session due again within half the time it has left). Before (found by review s25), keep-alive
took a session that had failed even once only after every never-failed session in the window:
after one passing 503 a session dying in 2 h waited behind a backlog of healthy sessions with
six days left (after an outage, or a fleet imported together), 30 passes' worth, and its
refresh token died unrefreshed. Now sessions in their refresh token's last stretch
(keepalive_retry_seconds, or 3 intervals if longer) are taken first, soonest first, whatever
their failed attempts; their hold-back is still honoured.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.services.keepalive import KeepAliveReport
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row

from . import DiAccounts, build_replica
from .conftest import SETTINGS

pytestmark = pytest.mark.timeout(300)


def test_a_session_that_failed_once_is_refreshed_before_it_dies(
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    batch = 2  # stands for 1000, as in test_keepalive_starvation
    settings = dataclasses.replace(SETTINGS, keepalive_batch=batch)
    replica = build_replica(db_sessionmaker, box, upstream, clock, settings)

    # Dies in 2 h; its one refresh meets a passing 503 (held back 1 h: half its time left).
    accounts.seed("flaky", refresh_in=timedelta(hours=2))
    emulator.fail_next(DI_TOKEN_PATH, 503)
    assert replica.keepalive.run_once() == KeepAliveReport(ran=True, failed=1)
    dies = read_row(db_sessionmaker, "flaky").refresh_token_expires_at
    assert dies is not None

    # A backlog of healthy sessions inside the window, six days left each: more than the
    # passes before flaky dies can take.
    for n in range(30 * batch):
        accounts.seed(f"healthy-{n:02d}", refresh_in=timedelta(days=6))

    passes = 0
    while clock.now() < dies and accounts.refreshes("flaky") == 0:
        replica.keepalive.run_once()
        passes += 1
        clock.advance(settings.keepalive_interval_seconds)

    assert accounts.refreshes("flaky") == 1, (
        f"{passes} passes refreshed sessions with six days left while the session that met "
        "one 503 (due again after 1 h, dying in 2 h) waited behind them: its refresh token died"
    )
    # Taken ahead of the backlog at the first pass inside its last hour (its hold-back ended
    # at the pass before, an hour before it dies: 12 intervals of 5 min after its failure).
    assert passes == 14
