"""SubmitMfa holds its challenge as long as the code may be with Garmin (LoginSettings.
mfa_claim_seconds, which config.mfa_claim_seconds sizes from GARMIN_AUTH_UPSTREAM_TIMEOUT, the
retries and the DI client ids: a SubmitMfa sends the code, then exchanges the ticket). Before,
the hold was a fixed 120 s, and GARMIN_AUTH_UPSTREAM_TIMEOUT is accepted up to 300 s per
request: when Garmin took longer than that to judge a code, another SubmitMfa took the
challenge while the first code was still with Garmin, a second code of the same challenge went
to Garmin at once, and the first one's answer was thrown away (a wrong code not counted, a
right one's tokens dropped).

docs/RELIABILITY.md guarantee 7: "A challenge completes at most once, and at most 3 codes per
challenge reach Garmin. However wrong codes race, spread over two replicas, Garmin judges at
most 3 of them"; README errors table: MFA_CHALLENGE_BUSY "another SubmitMfa for the same
challenge is in flight".

The service's clock (the database's, here a FakeClock shared by both replicas) is moved on
while Garmin holds the code: that is what a Garmin answer taking > 120 s looks like to the
service; the real HTTP call stays within the replicas' upstream timeout.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime

import grpc
import pytest

from auth_service.config import mfa_claim_seconds
from auth_service.domain.clock import FakeClock
from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, failure_of
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(120)

USER, EMAIL, CODE = "moss", "moss@example.com", "135790"
# How long Garmin holds each slow code, as the service's clock sees it (within a 300 s
# GARMIN_AUTH_UPSTREAM_TIMEOUT), and in real time.
GARMIN_SECONDS = 121
REAL_DELAY_SECONDS = 3.0


def _submit(replica: Replica, challenge: str, code: str) -> str:
    try:
        replica.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code=code))
    except grpc.RpcError as error:
        return failure_of(error).reason
    return "OK"


def _submit_into(answers: list[str], replica: Replica, challenge: str, code: str) -> None:
    answers.append(_submit(replica, challenge, code))


def _wait_for_arrivals(garmin: GarminEmulator, count: int) -> None:
    deadline = time.monotonic() + 10
    while garmin.request_count(VERIFY_MFA_PATH) < count:
        assert time.monotonic() < deadline, "the code never reached Garmin"
        time.sleep(0.02)


def test_a_code_still_with_garmin_keeps_its_challenge(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    # A 30 s upstream timeout (0.1-300 s is accepted) so the slow answer is waited for.
    base = service_factory.base_settings
    upstream = dataclasses.replace(base.upstream, timeout_seconds=30.0)
    # As load_settings sizes it for that timeout (tests/refresh/test_settings.py).
    login_settings = dataclasses.replace(
        base.login, mfa_claim_seconds=mfa_claim_seconds(upstream, base.di.client_ids)
    )
    first, second = (
        service_factory.start(
            login_flow=LoginFlow.DI, clock=clock, upstream=upstream, login=login_settings
        )
        for _ in range(2)
    )
    garmin.add_user(EMAIL, PASSWORD, mfa=True, mfa_code=CODE)
    challenge = login(first, USER, EMAIL).mfa_challenge_id

    answers: list[tuple[str, str]] = []
    for attempt in range(3):
        # The user's first try: Garmin sits on it.
        garmin.fail_next(VERIFY_MFA_PATH, None, delay=REAL_DELAY_SECONDS)
        arrived = garmin.request_count(VERIFY_MFA_PATH)
        slow: list[str] = []
        thread = threading.Thread(
            target=_submit_into, args=(slow, first, challenge, f"00000{attempt}")
        )
        thread.start()
        _wait_for_arrivals(garmin, arrived + 1)
        clock.advance(GARMIN_SECONDS)
        # The app retries (its own deadline passed) on the other replica.
        answers.append(("retry", _submit(second, challenge, f"11111{attempt}")))
        thread.join()
        answers.append(("slow", slow[0]))

    codes_at_garmin = garmin.request_count(VERIFY_MFA_PATH)
    at_once = garmin.peak_in_flight(VERIFY_MFA_PATH)
    assert (at_once, min(codes_at_garmin, 3)) == (1, codes_at_garmin), (
        f"{codes_at_garmin} codes of one challenge reached Garmin, up to {at_once} at once; "
        f"answers: {answers}"
    )
