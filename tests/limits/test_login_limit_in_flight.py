"""A Login the gate refuses because another sign-in of the account is with Garmin ("in flight",
RetryInfo 2 s, Garmin not called) spends nothing of the user's login limit: the attempt is
counted once the account's one sign-in is the caller's. Before, Login counted the attempt
first; with the default limit of 5, one burst of eight asks (README: "eight askers on two
replicas make one call, and the other seven get GARMIN_RATE_LIMITED with a RetryInfo of 2 s")
made one call to Garmin, answered three of them LOGIN_RATE_LIMITED instead, and locked the
user out of Login for the whole window."""

from __future__ import annotations

from functools import partial

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminCredentialsRejected, GarminRateLimited
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.policies import LoginSettings
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import LOGIN_PATH, GarminEmulator
from tests.limits import PASSWORD, at_once, build_replica

pytestmark = pytest.mark.timeout(60)

USER = "una"
EMAIL = "una@example.com"
ASKERS = 8
# The defaults, with the sign-in cooldown out of the way (no 429 here anyway).
LOGIN = LoginSettings(signin_cooldown_seconds=0)


def test_logins_refused_as_in_flight_do_not_spend_the_login_limit(
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    replicas = [
        build_replica(db_sessionmaker, box, upstream, clock, GarminLimitSettings(), login=LOGIN)
        for _ in range(2)
    ]
    emulator.add_user(EMAIL, PASSWORD)
    # Garmin takes a moment over the sign-in: the other asks arrive while it is out.
    emulator.fail_next(LOGIN_PATH, None, delay=1.0)
    before = emulator.request_count(LOGIN_PATH)

    # The user's app (or an impatient user) sends the same wrong password eight times at once.
    answers = at_once(
        [
            partial(replicas[i % 2].use_cases.connect.login, USER, EMAIL, "typo-password")
            for i in range(ASKERS)
        ]
    )
    assert emulator.request_count(LOGIN_PATH) - before == 1  # one reached Garmin
    assert sum(isinstance(a, GarminCredentialsRejected) for a in answers) == 1

    # The others were told to come back in 2 s; the user now types the right password.
    clock.advance(3)
    try:
        answer = replicas[0].use_cases.connect.login(USER, EMAIL, PASSWORD)
    except Exception as exc:  # noqa: BLE001
        kinds = sorted({type(a).__name__ for a in answers})
        pytest.fail(
            f"after one sign-in at Garmin, Login answers {type(exc).__name__} "
            f"({exc}); the burst's answers were {kinds}"
        )
    assert answer.status.state.name == "ACTIVE"
    assert all(isinstance(a, GarminCredentialsRejected | GarminRateLimited) for a in answers), [
        type(a).__name__ for a in answers
    ]
