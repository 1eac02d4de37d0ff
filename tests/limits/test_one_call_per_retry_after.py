"""Garmin answers 429 on each kind of endpoint the service calls: two replicas and eight
askers at once for one account make one call per Retry-After (with and without the header),
the session survives, and calls resume once the wait has passed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminRateLimited, LeaseHeld, MfaChallengeBusy
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.models import SessionState
from garmin_emulator import (
    DI_TOKEN_PATH,
    EXCHANGE_PATH,
    LOGIN_PATH,
    PROFILE_PATH,
    VERIFY_MFA_PATH,
    GarminEmulator,
)
from tests.leases import GarminAccounts, read_row
from tests.refresh import DiAccounts
from tests.upstream.di_http import ticket_for

from . import PASSWORD, Replica, at_once
from .conftest import MakeReplicas

pytestmark = pytest.mark.timeout(120)

USER = "ursula"
EMAIL = f"{USER}@example.com"
ASKERS = 8
LIMITS = GarminLimitSettings()  # the defaults: 60 s without Retry-After
# Refusals that are not about Garmin's limits but keep a call from reaching it all the same.
ANSWERED_BY_US = (LeaseHeld, MfaChallengeBusy)


@dataclass
class Scenario:
    """Where Garmin answers 429, and one asker's call (the i-th of the round)."""

    path: str
    ask: Callable[[Replica, int], object]
    # Run once before the rounds (MFA: the login that asks for the code).
    start: Callable[[Replica], None] | None = None
    # Filled with one fresh service ticket per asker before each round (ExchangeServiceTicket).
    tickets: list[str] | None = None


def _di_refresh(di: DiAccounts, _garth: GarminAccounts, _emu: GarminEmulator) -> Scenario:
    di.seed(USER, access_in=timedelta(seconds=-5))
    return Scenario(
        DI_TOKEN_PATH, lambda r, i: r.use_cases.leases.lease_session(USER, f"worker-{i}", None)
    )


def _garth_refresh(_di: DiAccounts, garth: GarminAccounts, _emu: GarminEmulator) -> Scenario:
    garth.seed(USER, timedelta(seconds=-5))
    return Scenario(
        EXCHANGE_PATH, lambda r, i: r.use_cases.leases.lease_session(USER, f"worker-{i}", None)
    )


def _validate(di: DiAccounts, _garth: GarminAccounts, _emu: GarminEmulator) -> Scenario:
    di.seed(USER)
    return Scenario(
        PROFILE_PATH, lambda r, _i: r.use_cases.sessions.get_status(USER, validate=True)
    )


def _login(_di: DiAccounts, _garth: GarminAccounts, emulator: GarminEmulator) -> Scenario:
    emulator.add_user(EMAIL, PASSWORD)
    return Scenario(
        LOGIN_PATH,
        lambda r, _i: r.use_cases.connect.login(USER, EMAIL, PASSWORD),
    )


def _mfa(_di: DiAccounts, _garth: GarminAccounts, emulator: GarminEmulator) -> Scenario:
    user = emulator.add_user(EMAIL, PASSWORD, mfa=True)
    challenges: list[str] = []

    def submit(replica: Replica, _i: int) -> object:
        if not challenges:
            raise AssertionError("no challenge")
        return replica.use_cases.connect.submit_mfa(challenges[-1], user.mfa_code)

    def start(replica: Replica) -> None:
        answer = replica.use_cases.connect.login(USER, EMAIL, PASSWORD)
        assert answer.mfa_challenge_id is not None
        challenges.append(answer.mfa_challenge_id)

    return Scenario(VERIFY_MFA_PATH, submit, start=start)


def _ticket(_di: DiAccounts, _garth: GarminAccounts, emulator: GarminEmulator) -> Scenario:
    emulator.add_user(EMAIL, PASSWORD)

    def exchange(replica: Replica, _i: int) -> object:
        ticket = tickets.pop()
        return replica.use_cases.tickets.exchange_service_ticket(USER, ticket, "")

    tickets: list[str] = []
    return Scenario(DI_TOKEN_PATH, exchange, tickets=tickets)


SCENARIOS = {
    "di_refresh": _di_refresh,
    "garth_refresh": _garth_refresh,
    "validate": _validate,
    "login": _login,
    "mfa": _mfa,
    "ticket": _ticket,
}


@pytest.mark.parametrize("retry_after", [None, 5], ids=["no-retry-after", "retry-after-5"])
@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_eight_askers_on_two_replicas_make_one_call_per_retry_after(  # noqa: PLR0917
    make_replicas: MakeReplicas,
    di_accounts: DiAccounts,
    garth_accounts: GarminAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
    kind: str,
    retry_after: int | None,
) -> None:
    replicas = make_replicas(LIMITS)
    scenario = SCENARIOS[kind](di_accounts, garth_accounts, emulator)
    if scenario.start is not None:
        scenario.start(replicas[0])
    wait = retry_after or LIMITS.default_wait_seconds

    def round_of_askers() -> list[object]:
        if scenario.tickets is not None:
            scenario.tickets.extend(ticket_for(emulator, EMAIL, PASSWORD) for _ in range(ASKERS))
        before = emulator.request_count(scenario.path)
        answers = at_once([partial(scenario.ask, replicas[i % 2], i) for i in range(ASKERS)])
        calls.append(emulator.request_count(scenario.path) - before)
        return answers

    calls: list[int] = []
    emulator.fail_next(scenario.path, 429, count=1000, retry_after=retry_after)
    first = round_of_askers()
    refused = [a for a in first if isinstance(a, GarminRateLimited)]
    assert refused, first
    assert all((a.retry_after_seconds or 0) <= wait for a in refused), refused

    clock.advance(wait - 1)  # not yet: every asker is answered without Garmin
    second = round_of_askers()
    # Answered by the service: the wait, or another asker's lease (itself released at once
    # because its refresh had to wait) or MFA submission.
    assert all(_held_back(a) or isinstance(a, ANSWERED_BY_US) for a in second), [
        (type(a).__name__, getattr(a, "held_back", None)) for a in second
    ]
    assert any(_held_back(a) for a in second), second

    clock.advance(1.5)
    emulator.clear_faults()  # Garmin answers again
    third = round_of_askers()

    # Garmin saw one call in the first round, none in the second; it answers again in the
    # third (refreshes: one per rotation; sign-ins one at a time).
    assert calls[:2] == [1, 0]
    assert calls[2] == 1 if kind.endswith("refresh") else calls[2] >= 1
    assert any(not isinstance(a, Exception) for a in third), third
    # Every kind ends with the user's session ACTIVE (a sign-in, or the one that survived).
    assert read_row(db_sessionmaker, USER).state is SessionState.ACTIVE
    limited = sum(n for (_endpoint, _opened), n in _rate_limited(replicas).items())
    assert limited == 1


def _held_back(answer: object) -> bool:
    return isinstance(answer, GarminRateLimited) and answer.held_back is not None


def _rate_limited(replicas: tuple[Replica, Replica]) -> dict[tuple[str, bool], int]:
    total: dict[tuple[str, bool], int] = {}
    for replica in replicas:
        for key, count in replica.events.limited.items():
            total[key] = total.get(key, 0) + count
    return total
