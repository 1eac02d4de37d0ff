"""The fault-injection run of issue 17, as a test: 30 accounts whose grants all need a
refresh, eight workers leasing in a loop on two replicas, and Garmin's token endpoint
answering 429 with Retry-After: 5 for 12 seconds. Before the gate, 201 to 440 calls reached
the endpoint in that window; now at most one per account, and calls resume within one
Retry-After of Garmin recovering, with every session still ACTIVE."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import SystemClock
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.models import SessionState
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row
from tests.refresh import DiAccounts

from . import Replica
from .conftest import MakeReplicas

pytestmark = pytest.mark.timeout(180)

ACCOUNTS = 30
WORKERS = 8
WINDOW_SECONDS = 12.0
RETRY_AFTER = 5
# Time for the first refresh after Garmin recovers: one Retry-After, plus the worker loop's
# pace and a loaded machine's scheduling.
RESUME_SLACK_SECONDS = 1.5


def _lease_in_a_loop(
    replica: Replica, worker: int, users: list[str], stop: threading.Event, outcomes: Counter[str]
) -> None:
    n = worker
    while not stop.is_set():
        user = users[n % len(users)]
        n += WORKERS
        try:
            grant = replica.use_cases.leases.lease_session(user, f"worker-{worker}", None)
        except Exception as exc:  # noqa: BLE001 - every refusal is counted, none is fatal
            outcomes[type(exc).__name__] += 1
            time.sleep(0.005)
            continue
        outcomes["granted"] += 1
        replica.use_cases.leases.release_lease(grant.lease.lease_id, None)


def test_thirty_accounts_hammered_for_twelve_seconds(
    make_replicas: MakeReplicas,
    di_accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    replicas = make_replicas(GarminLimitSettings(), on=SystemClock())
    users = [f"busy-{n}" for n in range(ACCOUNTS)]
    for user in users:
        di_accounts.seed(user, access_in=timedelta(seconds=-5))  # every grant must refresh
    emulator.fail_next(DI_TOKEN_PATH, 429, count=100_000, retry_after=RETRY_AFTER)
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    workers = [
        threading.Thread(
            target=_lease_in_a_loop,
            args=(replicas[n % 2], n, users, stop, outcomes),
            name=f"worker-{n}",
        )
        for n in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(WINDOW_SECONDS)
        in_window = emulator.request_count(DI_TOKEN_PATH)
        emulator.clear_faults()  # Garmin recovers
        recovered = time.monotonic()
        resumed_after = None
        deadline = recovered + 4 * RETRY_AFTER
        while time.monotonic() < deadline:
            refreshed = sum(1 for user in users if di_accounts.refreshes(user) > 0)
            if resumed_after is None and refreshed:
                resumed_after = time.monotonic() - recovered
            if refreshed == ACCOUNTS:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for worker in workers:
            worker.join()

    seen = f"{in_window} calls reached Garmin in the window; outcomes {dict(outcomes)}"
    assert in_window <= ACCOUNTS, seen
    assert outcomes["GarminRateLimited"] > in_window  # the rest were answered by the service
    assert resumed_after is not None
    assert resumed_after <= RETRY_AFTER + RESUME_SLACK_SECONDS
    assert all(di_accounts.refreshes(user) > 0 for user in users)
    assert {read_row(db_sessionmaker, user).state for user in users} == {SessionState.ACTIVE}
    assert sum(di_accounts.reuses(user) for user in users) == 0
