"""GARMIN_AUTH_REFRESH_CONCURRENCY: "refreshes this replica sends to Garmin at once, whatever
asks for them ...; the rest wait their turn" (README, Configuration; "bounds every refresh
in flight", "so a burst of due sessions cannot flood it").

Before df6ff49 a token file's refresh went through SessionRefresher (its slots). Found by
review: df6ff49's SessionImport._refresh_and_install called upstream.refresh itself, outside the
refresher's semaphore (now SessionRefresher.refresh_new, within it): with every slot taken by a
refresh Garmin is slow to answer, an import's refresh still goes out at once (a bulk onboarding
of token files is not bounded at all)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import DomainError
from auth_service.domain.policies import RefreshSettings
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row
from tests.refresh import ASKER, DiAccounts, build_replica

pytestmark = pytest.mark.timeout(60)

ONE_SLOT = RefreshSettings(concurrency=1, claim_seconds=10.0, wait_seconds=15.0)
BUSY = "review-slot-busy"
IMPORTER = "review-slot-import"
IMPORTER_EMAIL = f"{IMPORTER}@example.com"
HOLD_SECONDS = 1.5  # under the fixtures' 2 s upstream timeout


def test_an_imports_refresh_waits_for_a_refresh_slot(
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    replica = build_replica(db_sessionmaker, box, upstream, clock, ONE_SLOT)
    accounts.seed(BUSY)
    version = read_row(db_sessionmaker, BUSY).session_version
    emulator.add_user(IMPORTER_EMAIL, "irrelevant-password")
    token_file = json.dumps(emulator.garminconnect_tokens(IMPORTER_EMAIL))
    outcomes: dict[str, object] = {}

    def busy_refresh() -> None:
        try:
            outcomes["refresh"] = replica.refresher.refresh(BUSY, version, ASKER)
        except DomainError as exc:
            outcomes["refresh"] = exc

    def run_import() -> None:
        try:
            outcomes["import"] = replica.imports.import_session(
                IMPORTER, garminconnect_tokens=token_file
            )
        except DomainError as exc:
            outcomes["import"] = exc

    before = emulator.request_count(DI_TOKEN_PATH)
    emulator.fail_next(DI_TOKEN_PATH, None, delay=HOLD_SECONDS)  # the one slot's refresh
    refreshing = threading.Thread(target=busy_refresh)
    refreshing.start()
    deadline = time.monotonic() + 10
    while emulator.request_count(DI_TOKEN_PATH) == before:
        assert time.monotonic() < deadline, "the refresh never reached Garmin"
        time.sleep(0.005)
    importing = threading.Thread(target=run_import)
    importing.start()
    overlapped = False
    while importing.is_alive() or refreshing.is_alive():
        if (
            accounts.refreshes(IMPORTER) == 1
            and emulator.di_refresh_count(accounts.email(BUSY)) == 0
        ):
            overlapped = True  # Garmin answered the import while the slot's call was out
        time.sleep(0.005)
    importing.join()
    refreshing.join()

    assert not isinstance(outcomes["refresh"], Exception), outcomes["refresh"]
    assert not isinstance(outcomes["import"], Exception), outcomes["import"]
    assert not overlapped, (
        "the import's refresh went to Garmin while the replica's only refresh slot was in "
        "use (GARMIN_AUTH_REFRESH_CONCURRENCY=1): two refreshes in flight at once"
    )


class _Recorded:
    """RefreshEvents that keeps what it is told (the replica's metrics port)."""

    def __init__(self) -> None:
        self.unstored: list[float] = []

    def refresh_finished(self, kind: str, outcome: str, seconds: float) -> None:
        return None

    def refresh_waited(self, outcome: str) -> None:
        return None

    def rotated_pair_unstored(self, seconds: float) -> None:
        self.unstored.append(seconds)


def test_an_imports_rotated_pair_is_measured_until_its_commit(
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    """garmin_auth_rotated_pair_unstored_seconds: "how long a pair Garmin issued lived only in
    memory before its commit landed (a crash within it loses a DI session)" (README,
    Metrics). An import's pair is such a pair (its commit is retried for 10 minutes, bfcc0e3),
    but SessionImport reports nothing: an outage during imports is not seen."""
    events = _Recorded()
    replica = build_replica(db_sessionmaker, box, upstream, clock, ONE_SLOT, events)
    emulator.add_user(IMPORTER_EMAIL, "irrelevant-password")
    token_file = json.dumps(emulator.garminconnect_tokens(IMPORTER_EMAIL))

    replica.imports.import_session(IMPORTER, garminconnect_tokens=token_file)

    assert emulator.di_refresh_count(IMPORTER_EMAIL) == 1
    assert len(events.unstored) == 1, (
        f"{len(events.unstored)} observation(s) of the rotated pair's time unstored for an "
        "import whose pair Garmin issued"
    )
