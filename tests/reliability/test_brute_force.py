"""Brute force across two replicas, on SQLite and PostgreSQL.

tests/service/test_login.py shows the limits one call at a time (3 wrong codes end a
challenge on one replica; the login limit holds across two). An attacker does not wait for
answers: here the guesses race, spread over two replicas behind a load balancer, and what
counts is how many guesses reach Garmin.

- However wrong codes race, at most 3 per challenge ever reach Garmin; then the challenge is
  gone on every replica, the right code included.
- However logins race, exactly GARMIN_AUTH_LOGIN_LIMIT reach Garmin per window; the others
  answer LOGIN_RATE_LIMITED with a RetryInfo, on both replicas.
- Together: an attacker's MFA guesses per user per window are at most limit x 3.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import grpc
import pytest

from auth_service.domain.policies import LoginSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import LOGIN_PATH, VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, failure_of

from . import PASSWORD, SkewedClock, challenges_of, record_figures

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")
RIGHT_CODE = "271828"


def at_once(count: int, action: Callable[[int], T]) -> list[T]:
    """action(0..count-1) on `count` threads released together."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T:
        barrier.wait()
        return action(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as error:
        failure = failure_of(error)
        return f"{failure.code.name} {failure.reason}"
    return "OK"


def login(replica: Replica, user: str, password: str = PASSWORD) -> Any:
    request = pb.LoginRequest(user_id=user, email=f"{user}@example.com", password=password)
    return replica.call("Login", request)


def submit(replica: Replica, challenge_id: str, code: str) -> Any:
    return replica.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge_id, code=code))


def wrong_code(index: int) -> str:
    return f"{index:06d}"


def test_racing_wrong_codes_on_two_replicas_reach_garmin_at_most_three_times(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    replicas = [service_factory.start(), service_factory.start()]
    garmin.add_user("max@example.com", PASSWORD, mfa=True, mfa_code=RIGHT_CODE)
    challenge = login(replicas[0], "max").mfa_challenge_id
    # Garmin takes a moment to judge each code, so the guesses overlap.
    garmin.fail_next(VERIFY_MFA_PATH, None, count=100, delay=0.2)

    rounds: list[list[str]] = []
    while not rounds or "NOT_FOUND MFA_CHALLENGE_NOT_FOUND" not in rounds[-1]:
        assert len(rounds) < 10, rounds
        rounds.append(
            at_once(
                12,
                lambda i: outcome(lambda: submit(replicas[i % 2], challenge, wrong_code(i))),
            )
        )
    answers = Counter(answer for answers in rounds for answer in answers)
    assert set(answers) <= {
        "PERMISSION_DENIED MFA_CODE_REJECTED",
        "ABORTED MFA_CHALLENGE_BUSY",
        "NOT_FOUND MFA_CHALLENGE_NOT_FOUND",
    }, answers
    assert answers["PERMISSION_DENIED MFA_CODE_REJECTED"] == 3
    assert garmin.request_count(VERIFY_MFA_PATH) == 3
    for replica in replicas:
        late = outcome(partial(submit, replica, challenge, RIGHT_CODE))
        assert late == "NOT_FOUND MFA_CHALLENGE_NOT_FOUND"
    assert challenges_of(database_url, "max") == []
    assert garmin.request_count(VERIFY_MFA_PATH) == 3
    record_figures("test_brute_force_mfa", guesses=sum(answers.values()), reached_garmin=3)


def test_login_storm_on_two_replicas_lets_exactly_the_limit_through(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    limits = LoginSettings(limit=3, window_seconds=3600)
    replicas = [service_factory.start(login=limits), service_factory.start(login=limits)]
    garmin.add_user("ned@example.com", PASSWORD)

    answers = Counter(
        at_once(24, lambda i: outcome(lambda: login(replicas[i % 2], "ned", f"guess-{i}")))
    )

    # Only sign-ins that reached Garmin are counted: the others found another sign-in of the
    # account with Garmin (answered without Garmin, not counted) or the window's attempts used.
    reached = garmin.request_count(LOGIN_PATH)
    assert 1 <= reached <= 3
    assert answers["PERMISSION_DENIED GARMIN_CREDENTIALS_REJECTED"] == reached
    assert set(answers) <= {
        "PERMISSION_DENIED GARMIN_CREDENTIALS_REJECTED",
        "RESOURCE_EXHAUSTED GARMIN_RATE_LIMITED",
        "RESOURCE_EXHAUSTED LOGIN_RATE_LIMITED",
    }
    # The guessing goes on, one at a time: exactly the limit ever reaches Garmin.
    for i in range(4):
        outcome(partial(login, replicas[i % 2], "ned", f"late-guess-{i}"))
    assert garmin.request_count(LOGIN_PATH) == 3
    # The right password does not help once the window's attempts are used, on any replica.
    for replica in replicas:
        assert outcome(partial(login, replica, "ned")) == ("RESOURCE_EXHAUSTED LOGIN_RATE_LIMITED")
    assert garmin.request_count(LOGIN_PATH) == 3
    record_figures("test_brute_force_logins", guesses=30, reached_garmin=3)


def test_mfa_guesses_per_window_are_at_most_the_login_limit_times_three(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    limits = LoginSettings(limit=2, window_seconds=3600)
    replicas = [service_factory.start(login=limits), service_factory.start(login=limits)]
    garmin.add_user("oda@example.com", PASSWORD, mfa=True, mfa_code=RIGHT_CODE)

    guesses = logins = 0
    for attempt in range(10):
        replica = replicas[attempt % 2]
        try:
            challenge = login(replica, "oda").mfa_challenge_id
        except grpc.RpcError as error:
            refused = failure_of(error)
            assert (refused.code, refused.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "LOGIN_RATE_LIMITED",
            )
            break
        logins += 1
        for index in range(5):
            guesses += 1
            outcome(partial(submit, replicas[index % 2], challenge, wrong_code(index)))
    assert logins == 2
    assert garmin.request_count(LOGIN_PATH) == 2
    assert garmin.request_count(VERIFY_MFA_PATH) == 2 * 3
    record_figures("test_brute_force_mfa_budget", guesses=guesses, reached_garmin=6)


def test_a_replica_reading_an_earlier_time_does_not_restart_the_login_window(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """Replicas agree on time only to within milliseconds (and a request reads the time
    before it waits for the throttle row), so a request may see a window that started
    "after" its own time. That is the same window, not a new one: nothing gets reset."""
    limits = LoginSettings(limit=2, window_seconds=3600)
    first = service_factory.start(login=limits)
    lagging = service_factory.start(login=limits, clock=SkewedClock(timedelta(seconds=-2)))
    garmin.add_user("pia@example.com", PASSWORD)
    for _ in range(2):
        login(first, "pia")
    for replica in (lagging, first, lagging):
        assert outcome(partial(login, replica, "pia")) == ("RESOURCE_EXHAUSTED LOGIN_RATE_LIMITED")
    assert garmin.request_count(LOGIN_PATH) == 2
