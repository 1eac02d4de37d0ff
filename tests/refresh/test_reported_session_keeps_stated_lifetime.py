"""A holder's ReportRefreshed keeps the refresh lifetime Garmin stated for the session.

The DI provider keeps the refresh lifetime Garmin last stated for a session
(GarminTokens.refresh_token_lifetime_seconds, sealed with the tokens) because refresh answers
usually omit refresh_token_expires_in (README "Refresh expiry": "now + the lifetime Garmin
last stated for the session, else GARMIN_AUTH_DI_REFRESH_LIFETIME"). A worker_full holder's
ReportRefreshed arrives as a GarminSession message, which has no field for it: the stored
session loses it, and the service's next refresh (keep-alive's here) stamps the new refresh
token with the 30-day default. When Garmin stated a shorter life (10 days here), keep-alive
then believed the token lived 30 days and did not pick it before day 23: it died on day 10
(found by review). The stored lifetime is now carried over to a report of the same client id.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.upstream.router import UpstreamRouter
from garmin_client import session_proto
from garmin_emulator import GarminEmulator
from tests.leases import read_row
from tests.refresh import ASKER, DiAccounts
from tests.refresh.keepalive_bench import KeepAliveBench

pytestmark = pytest.mark.timeout(60)

USER = "stated-lifetime"
STATED = timedelta(days=10)  # Garmin's stated refresh lifetime for this account's tokens
SLACK = timedelta(minutes=5)


def _wire(tokens):  # type: ignore[no-untyped-def]
    """As the tokens travel over gRPC (grant to the holder, report back to the service)."""
    return session_proto.tokens_from_proto(session_proto.tokens_to_proto(tokens))


def test_keepalive_after_a_holders_report_keeps_garmins_stated_refresh_lifetime(
    bench: KeepAliveBench,
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    # The service's DI provider on the service's clock (as the server wires it).
    first = bench.replica_with_di()
    emulator.di.refresh_token_expires_in = int(STATED.total_seconds())
    accounts.seed(USER, refresh_in=STATED)  # the login answer stated 10 days

    # Control: the service's own refresh remembers the stated 10 days.
    first.refresher.refresh(USER, read_row(db_sessionmaker, USER).session_version, ASKER)
    stored = read_row(db_sessionmaker, USER).refresh_token_expires_at
    assert stored is not None
    assert stored <= clock.now() + STATED + SLACK

    # A worker_full holder refreshes by itself and reports the pair, with the right expiry.
    grant = first.leases.lease_session(USER, "legacy-worker", None, with_refresh_token=True)
    own = upstream.refresh(_wire(grant.tokens))
    own = dataclasses.replace(
        own, oauth2=dataclasses.replace(own.oauth2, refresh_token_expires_at=clock.now() + STATED)
    )
    first.leases.report_refreshed(
        grant.lease.lease_id, _wire(own), session_version=grant.status.session_version
    )
    first.leases.release_lease(grant.lease.lease_id, None)

    # Five days on, inside the 7-day window: keep-alive rotates it (Garmin: 10 more days).
    clock.advance(timedelta(days=5).total_seconds())
    assert first.keepalive.run_once().refreshed == 1
    stored = read_row(db_sessionmaker, USER).refresh_token_expires_at
    assert stored is not None
    assert stored <= clock.now() + STATED + SLACK, (
        f"keep-alive's rotation stored a refresh expiry {stored - clock.now()} ahead, though "
        f"Garmin states {STATED} for this session: the holder's report dropped the stated "
        "lifetime and the 30-day default took over; keep-alive will not pick the session "
        f"before {stored - timedelta(seconds=first.keepalive._settings.keepalive_window_seconds)}"
        f", after its refresh token died at {clock.now() + STATED}"
    )
