"""ReportInvalidated(v) while the service's own refresh of version v is out at Garmin.

The README's rule (and tests/refresh/test_report_invalidated_version.py): a holder's 401 on
the token of version v ends the session only if the service has not refreshed v since. A
refresh of v already claimed and sent to Garmin has killed v's refresh token there; the pair
Garmin answers is the session. Before, the report ended the session from under that refresh
(a holder with two requests in flight: one's RefreshLease(v) out at Garmin, the other's second
401 reported), and the pair Garmin had just issued was dropped ("session replaced during its
refresh"); a moment later the same report was refused as stale. Now the report waits for
the refresh, as a refresh would, and is then judged against what it left. Found by review
(s27); both databases, the DI provider over HTTP to the emulator.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.errors import DomainError, GarminUnavailable, InvalidArgument
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import LeaseGrant, SessionState
from garmin_emulator import DI_TOKEN_PATH, PROFILE_PATH
from tests.leases import read_row
from tests.refresh import ASKER, DiAccounts, Replica, during_next_refresh

pytestmark = pytest.mark.timeout(60)

USER = "report-during-refresh"


def _leased_and_refreshed_once(replicas: tuple[Replica, Replica]) -> tuple[LeaseGrant, int]:
    """A lease, and the version its holder's RefreshLease after a first 401 gave it."""
    grant = replicas[0].leases.lease_session(USER, "worker-1", None)
    digest = lease_digest(grant.lease.lease_id)
    held = (
        replicas[1]
        .refresher.refresh(USER, grant.status.session_version, ASKER, held_by=digest)
        .row.session_version
    )
    return grant, held


def _report_during_refresh(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    grant: LeaseGrant,
    held: int,
    *,
    reported_version: int,
    during: Callable[..., AbstractContextManager[None]] = during_next_refresh,
) -> list[object]:
    """Request 2's RefreshLease(held) goes out to Garmin; meanwhile request 1, having met a
    401 again on the token of version `held`, reports it. What the report answered."""
    reports: list[object] = []

    def report() -> None:
        try:
            reports.append(
                replicas[0].leases.report_invalidated(
                    grant.lease.lease_id, "401 on /userprofile", session_version=reported_version
                )
            )
        except DomainError as exc:
            reports.append(exc)

    with during(accounts.emulator, report), contextlib.suppress(DomainError):
        replicas[1].refresher.refresh(USER, held, ASKER, held_by=lease_digest(grant.lease.lease_id))
    return reports


@pytest.mark.parametrize("reported", ["the version", "no version"])
def test_a_report_during_a_refresh_garmin_accepts_keeps_the_rotated_pair(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    reported: str,
) -> None:
    accounts.seed(USER)
    grant, held = _leased_and_refreshed_once(replicas)

    reports = _report_during_refresh(
        replicas, accounts, grant, held, reported_version=held if reported == "the version" else 0
    )

    # Garmin accepted that refresh: the session is alive there, its old token dead.
    assert accounts.refreshes(USER) == 2
    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.ACTIVE, (reports, row.invalidated_reason)
    assert row.session_version == held + 1
    # The report is of a replaced version now: refused, as it is a moment later.
    assert len(reports) == 1
    assert isinstance(reports[0], InvalidArgument), reports
    assert [v.field for v in reports[0].violations] == ["session_version"]


def test_a_report_during_a_refresh_garmin_fails_ends_the_session_after_it(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed(USER)
    grant, held = _leased_and_refreshed_once(replicas)

    def failing_refresh(
        emulator: object, action: Callable[[], object]
    ) -> AbstractContextManager[None]:
        # The refresh meets a 503 after a while: its claim is released, nothing stored.
        context = during_next_refresh(accounts.emulator, action)
        accounts.emulator.fail_next(DI_TOKEN_PATH, 503, delay=0.5)
        return context

    reports = _report_during_refresh(
        replicas, accounts, grant, held, reported_version=held, during=failing_refresh
    )

    # The holder's 401 on a fresh token stands once the refresh left the session as it was.
    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.AUTH_EXPIRED, reports
    assert len(reports) == 1
    assert not isinstance(reports[0], GarminUnavailable), reports


def test_a_validation_refused_during_a_holders_refresh_keeps_the_rotated_pair(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    """The same race through GetStatus(validate): its own refresh, then Garmin's 401 to the
    fresh access token, which ends the session; but a worker leased the session in between
    and its RefreshLease is out at Garmin. Before, the validation ended the session from
    under that refresh, and the pair Garmin issued was dropped."""
    accounts.seed(USER, access_in=timedelta(seconds=30))  # due: validate refreshes first
    emulator = accounts.emulator
    # The validation's profile GET, after its refresh, answers 401, a second later.
    emulator.fail_next(PROFILE_PATH, 401, delay=1.0)
    profile_gets = emulator.request_count(PROFILE_PATH)
    holder: dict[str, object] = {}

    def worker_refreshes() -> None:
        grant = replicas[1].leases.lease_session(USER, "worker-1", None)
        digest = lease_digest(grant.lease.lease_id)
        # Held at Garmin past the validation's 401.
        emulator.fail_next(DI_TOKEN_PATH, None, delay=1.5)
        try:
            holder["refreshed"] = replicas[1].refresher.refresh(
                USER, grant.status.session_version, ASKER, held_by=digest
            )
        except DomainError as exc:
            holder["refreshed"] = exc

    with ThreadPoolExecutor(max_workers=1) as pool:
        validating = pool.submit(lambda: replicas[0].sessions.get_status(USER, validate=True))
        deadline = time.monotonic() + 10
        while emulator.request_count(PROFILE_PATH) == profile_gets:
            assert time.monotonic() < deadline, "the validation never reached the profile"
            time.sleep(0.002)
        worker_refreshes()
        validating.result(timeout=30)

    row = read_row(db_sessionmaker, USER)
    assert not isinstance(holder["refreshed"], DomainError), holder
    assert row.state is SessionState.ACTIVE, (holder, row.invalidated_reason)
    assert accounts.refreshes(USER) == 2
