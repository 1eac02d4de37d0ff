"""A half-open breaker of diauth's token endpoint is closed only by an answer from that endpoint.
A Login (and a SubmitMfa) is admitted for (SSO, DI_TOKEN), so it may take the DI_TOKEN probe;
when Garmin's SSO answers "MFA required" or refuses the password, the token endpoint was never
called. Before, GarminGate.answered() closed the DI_TOKEN breaker anyway, and every replica's
refreshes went to an endpoint nobody had probed. Now the probe goes to the next call."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminCredentialsRejected, GarminRateLimited
from auth_service.domain.garmin_limits import BreakerPhase, GarminEndpoint, GarminLimitSettings
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.limits import PASSWORD, at_once
from tests.limits.conftest import MakeReplicas
from tests.refresh import DiAccounts

pytestmark = pytest.mark.timeout(120)

LIMITS = GarminLimitSettings(breaker_threshold=1, breaker_window_seconds=60)
RETRY_AFTER = 10
SIGNER = "signer@example.com"


def _phase(db: sessionmaker[Session], clock: FakeClock) -> BreakerPhase:
    with db() as session:
        breakers = SqlGarminLimitRepository(session).breakers((GarminEndpoint.DI_TOKEN,))
    return breakers[0].phase(clock.now()) if breakers else BreakerPhase.CLOSED


@pytest.mark.parametrize("sign_in", ["mfa_required", "wrong_password"])
def test_a_sign_in_that_never_reached_the_token_endpoint_does_not_close_its_breaker(
    make_replicas: MakeReplicas,
    di_accounts: DiAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
    sign_in: str,
) -> None:
    first, second = make_replicas(LIMITS)
    users = [f"due-{n}" for n in range(6)]
    for user in users:
        di_accounts.seed(user, access_in=timedelta(seconds=-5))  # every grant needs a refresh
    emulator.add_user(SIGNER, PASSWORD, mfa=sign_in == "mfa_required")
    emulator.fail_next(DI_TOKEN_PATH, 429, count=1000, retry_after=RETRY_AFTER)

    # One 429 from the token endpoint opens its breaker (threshold 1).
    with pytest.raises(GarminRateLimited):
        first.use_cases.leases.lease_session(users[0], "worker", None)
    assert _phase(db_sessionmaker, clock) is BreakerPhase.OPEN

    clock.advance(RETRY_AFTER + 1)  # half-open: the next call to the token endpoint probes it
    token_calls = emulator.request_count(DI_TOKEN_PATH)

    # A sign-in for another account: Garmin's SSO answers it, the token endpoint is not asked.
    if sign_in == "mfa_required":
        answer = second.use_cases.connect.login("signer", SIGNER, PASSWORD)
        assert answer.mfa_challenge_id is not None
    else:
        with pytest.raises(GarminCredentialsRejected):
            second.use_cases.connect.login("signer", SIGNER, "not-the-password")
    assert emulator.request_count(DI_TOKEN_PATH) == token_calls  # never reached diauth

    # Nobody has heard from the token endpoint since its 429: it must still want its probe.
    phase = _phase(db_sessionmaker, clock)
    assert phase is BreakerPhase.HALF_OPEN, (
        f"the DI_TOKEN breaker is {phase.value} after a sign-in that only reached the SSO"
    )

    # What it costs: five accounts' grants on two replicas all go to the still-limiting endpoint,
    # where a half-open breaker lets one probe through.
    before = emulator.request_count(DI_TOKEN_PATH)
    at_once(
        [
            partial((first, second)[n % 2].use_cases.leases.lease_session, user, "worker", None)
            for n, user in enumerate(users[1:])
        ]
    )
    assert emulator.request_count(DI_TOKEN_PATH) - before == 1
