"""docs/RELIABILITY.md, guarantee 8: with the login limit and 3 codes per challenge, an attacker
gets at most (limit + 1) x 3 MFA guesses per user in any one window. The login window is fixed
and a challenge outlives the window its Login was counted in (600 s): the challenge of a
window's last Login is still guessable in the next window, on top of that window's own logins.
Before, the guarantee said limit x 3, which this worst case passes (a review found it)."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.policies import LoginSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, failure_of

PASSWORD = "correct horse battery staple"
LIMIT = 2


@pytest.mark.timeout(90)
def test_mfa_guesses_in_one_window_stay_within_the_limit_plus_one_times_three(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    replica = service_factory.start(
        clock=clock, login=LoginSettings(limit=LIMIT, window_seconds=3600)
    )
    garmin.add_user("win@example.com", PASSWORD, mfa=True, mfa_code="271828")

    def login() -> str:
        request = pb.LoginRequest(user_id="win", email="win@example.com", password=PASSWORD)
        return str(replica.call("Login", request).mfa_challenge_id)

    def guess_three(challenge: str) -> None:
        for code in ("000001", "000002", "000003"):
            with pytest.raises(grpc.RpcError) as wrong:
                replica.call(
                    "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code=code)
                )
            assert failure_of(wrong.value).reason == "MFA_CODE_REJECTED"

    login()  # window 1 starts at t0
    clock.advance(3300)
    late = login()  # window 1's last login; its challenge lives until t0 + 3900 s
    clock.advance(301)  # t0 + 3601 s: window 2 from here on
    garmin.reset_records()
    guess_three(late)
    for _ in range(LIMIT):
        guess_three(login())
    with pytest.raises(grpc.RpcError) as refused:
        login()
    assert failure_of(refused.value).reason == "LOGIN_RATE_LIMITED"

    guesses = garmin.request_count(VERIFY_MFA_PATH)
    assert guesses <= (LIMIT + 1) * 3, (
        f"{guesses} MFA guesses reached Garmin within one login window; "
        f"RELIABILITY.md guarantee 8 says at most (limit + 1) x 3 = {(LIMIT + 1) * 3}"
    )
