"""One sign-in at a time per Garmin account, whichever user id makes it.

For one user id the gate makes sign-ins one at a time ("two at once would both meet the same
429"): a Login arriving while another is with Garmin answers GARMIN_RATE_LIMITED without
calling Garmin. Before, two user ids with the same email were not held to that (d69ea53 read
the account's cooldown once, before the sign-in): a sign-in of one was already under way when
the other's met a 429, and it then posted its password into the account's 429 (found by
review). Now the account is claimed for its one sign-in, and its cooldown is read once the
claim is ours.

README (errors, 429 on login): "the account's sign-in cooldown starts ...: its logins and MFA
codes, for the user and for every user id signing in with the same email, are refused on every
replica without calling Garmin". RELIABILITY.md 8: "GARMIN_RATE_LIMITED while another sign-in
of the account is with Garmin".
"""

from __future__ import annotations

import threading

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from garmin_emulator.endpoints import SIGN_IN_PATH
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

EMAIL = "shared@example.com"


def test_a_second_user_id_waits_for_the_accounts_sign_in_under_way(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    first, second = service_factory.start(), service_factory.start()
    garmin.add_user(EMAIL, PASSWORD)

    # "ann-again"'s sign-in is under way (its sign-in page answers slowly).
    garmin.fail_next(SIGN_IN_PATH, None, delay=1.5)
    outcome: dict[str, object] = {}

    def slow() -> None:
        try:
            outcome["answer"] = login(second, "ann-again", EMAIL)
        except grpc.RpcError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    for _ in range(200):
        if garmin.request_count(SIGN_IN_PATH) >= 1:
            break
        threading.Event().wait(0.01)

    # Meanwhile "ann", the same Garmin account, asks to sign in on the other replica.
    before = garmin.request_count()
    refused = expect_failure(lambda: login(first, "ann", EMAIL.upper()))
    reached = garmin.request_count() - before
    thread.join(timeout=20)
    assert (refused.reason, reached) == ("GARMIN_RATE_LIMITED", 0), (
        f"a second user id's Login while the account's sign-in was with Garmin answered "
        f"{refused.reason} and made {reached} call(s) to Garmin"
    )
    assert refused.retry_seconds == 2  # the sign-in under way ends within seconds
    assert "answer" in outcome, outcome
    # Its sign-in over, the account's claim is free: the other user id signs in.
    assert login(first, "ann", EMAIL).outcome == pb.LOGIN_OUTCOME_AUTHENTICATED
