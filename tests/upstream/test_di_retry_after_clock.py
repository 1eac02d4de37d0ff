"""A Retry-After that Garmin gives as an HTTP date is measured on the clock the service keeps
the wait on: the DI provider's, which the composition root sets to the database's clock (the
cooldown's, auth_service/services/garmin_gate.py).

Before, the DI provider measured the date on this machine's clock. On a replica whose clock
runs 5 minutes ahead of the database, Garmin's "not before T + 10 min" became a 5-minute
cooldown, kept on the database's clock for every replica, and Garmin was called again during
the wait it had asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.models import LoginNeedsMfa
from auth_service.domain.policies import IOS_SERVICE_URL, DiSettings, LoginFlow
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.di.provider import DiUpstream
from auth_service.upstream.garth.provider import GarthUpstream
from auth_service.upstream.router import UpstreamRouter
from garmin_client.answers import status_error
from garmin_client.endpoints import PROFILE_PATH
from garmin_client.errors import RateLimited
from garmin_emulator import (
    DI_TOKEN_PATH,
    LOGIN_PATH,
    VERIFY_MFA_PATH,
    EmulatedUser,
    GarminEmulator,
)
from tests.limits import build_replica
from tests.refresh import DiAccounts

from .conftest import PASSWORD, make_settings
from .di_http import ticket_for
from .di_provider import issued_tokens

pytestmark = pytest.mark.timeout(60)

# This replica's machine clock runs this far ahead of the database's (and Garmin's).
MACHINE_AHEAD = timedelta(minutes=5)
# What Garmin asks: no call before its clock reads this much later.
GARMIN_WAIT = timedelta(minutes=10)


def database_clock() -> FakeClock:
    """The database's clock, behind this machine's (whole seconds, as an HTTP date has)."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0) - MACHINE_AHEAD)


def garmin_asks_to_wait(
    emulator: GarminEmulator, path: str, clock: FakeClock, count: int = 1
) -> None:
    """The next `count` calls to `path` answer 429 with Retry-After: GARMIN_WAIT from `clock`'s
    now, an HTTP date."""
    not_before = format_datetime(clock.now() + GARMIN_WAIT, usegmt=True)
    emulator.fail_next(path, 429, count, retry_after=not_before)


def _login(upstream: DiUpstream, emulator: GarminEmulator, clock: FakeClock) -> None:
    user = emulator.add_user("runner@example.com", PASSWORD)
    garmin_asks_to_wait(emulator, LOGIN_PATH, clock)
    upstream.login(user.email, PASSWORD)


def _mfa(upstream: DiUpstream, emulator: GarminEmulator, clock: FakeClock) -> None:
    user: EmulatedUser = emulator.add_user("careful@example.com", PASSWORD, mfa=True)
    result = upstream.login(user.email, PASSWORD)
    assert isinstance(result, LoginNeedsMfa)
    garmin_asks_to_wait(emulator, VERIFY_MFA_PATH, clock)
    upstream.resume_mfa(result.pending, user.mfa_code)


def _ticket_exchange(upstream: DiUpstream, emulator: GarminEmulator, clock: FakeClock) -> None:
    user = emulator.add_user("runner@example.com", PASSWORD)
    ticket = ticket_for(emulator, user.email, PASSWORD)
    garmin_asks_to_wait(emulator, DI_TOKEN_PATH, clock)
    upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL)


def _refresh(upstream: DiUpstream, emulator: GarminEmulator, clock: FakeClock) -> None:
    user = emulator.add_user("runner@example.com", PASSWORD)
    tokens = issued_tokens(emulator, user.email)
    garmin_asks_to_wait(emulator, DI_TOKEN_PATH, clock)
    upstream.refresh(tokens)


def _validate(upstream: DiUpstream, emulator: GarminEmulator, clock: FakeClock) -> None:
    user = emulator.add_user("runner@example.com", PASSWORD)
    tokens = issued_tokens(emulator, user.email)
    garmin_asks_to_wait(emulator, PROFILE_PATH, clock)
    upstream.validate(tokens, allow_refresh=False)


DiCall = Callable[[DiUpstream, GarminEmulator, FakeClock], None]


@pytest.mark.parametrize(
    "call",
    [_login, _mfa, _ticket_exchange, _refresh, _validate],
    ids=["login", "mfa", "ticket-exchange", "refresh", "validate"],
)
def test_every_di_call_measures_a_retry_after_date_on_the_providers_clock(
    emulator: GarminEmulator, call: DiCall
) -> None:
    clock = database_clock()
    upstream = DiUpstream(make_settings(emulator), DiSettings(), clock=clock)

    with pytest.raises(GarminRateLimited) as limited:
        call(upstream, emulator, clock)

    assert limited.value.retry_after_seconds == GARMIN_WAIT.total_seconds()


def test_the_account_waits_until_garmins_date_on_a_replica_whose_clock_runs_ahead(
    emulator: GarminEmulator, db_sessionmaker: sessionmaker[Session], keyring: Keyring
) -> None:
    clock = database_clock()
    settings = make_settings(emulator, retries=0)
    upstream = UpstreamRouter(
        garth=GarthUpstream(settings, clock=clock),
        di=DiUpstream(settings, DiSettings(plain_http=True), clock=clock),
        login_flow=LoginFlow.DI,
    )
    box = SecretBox(keyring)
    replica = build_replica(db_sessionmaker, box, upstream, clock, GarminLimitSettings())
    DiAccounts(emulator, clock, db_sessionmaker, box).seed(
        "skewed",
        access_in=timedelta(seconds=-5),  # every grant needs a refresh
    )
    garmin_asks_to_wait(emulator, DI_TOKEN_PATH, clock, count=10)
    with pytest.raises(GarminRateLimited):
        replica.use_cases.leases.lease_session("skewed", "worker-1", None)
    assert emulator.request_count(DI_TOKEN_PATH) == 1

    # Seven minutes on, Garmin's ten are not over: the account still waits, without a call.
    clock.advance(7 * 60)
    with pytest.raises(GarminRateLimited) as held:
        replica.use_cases.leases.lease_session("skewed", "worker-2", None)

    assert emulator.request_count(DI_TOKEN_PATH) == 1, "Garmin was called during its wait"
    assert held.value.held_back == "account_cooldown"
    assert held.value.retry_after_seconds == pytest.approx(3 * 60, abs=1)


def test_garmin_client_measures_a_retry_after_date_from_the_now_it_is_given() -> None:
    """For the service's other callers (garth's provider, the Connect API client), which
    classify Garmin's answers through garmin_client.answers."""
    clock = database_clock()
    not_before = format_datetime(clock.now() + GARMIN_WAIT, usegmt=True)

    error = status_error(
        429, "https://connectapi.garmin.com/x", not_before, judging_tokens=True, now=clock.now()
    )

    assert isinstance(error, RateLimited)
    assert error.retry_after_seconds == GARMIN_WAIT.total_seconds()
