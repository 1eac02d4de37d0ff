"""A code whose POST timed out may still be with Garmin, and Garmin may still judge it.

RELIABILITY 6/7: the challenge stays claimed "as long as the code may be with Garmin", and
"at most 3 codes per challenge reach Garmin". SubmitMfa released its claim (and counted
nothing) as soon as its own POST timed out, so a retry sent another code while Garmin still
judged the first, and a slow Garmin judged any number of codes of one challenge (6 of 6 in
the first test). Now such a code counts as a try and keeps the claim until it ends.
"""

from __future__ import annotations

import time

import grpc
import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(90)

# service_settings' upstream timeout is 2 s: Garmin answers (and judges) after it.
GARMIN_SLOWER_THAN_TIMEOUT = 3.0

FLOWS = [pytest.param(LoginFlow.DI, id="di"), pytest.param(LoginFlow.GARTH, id="garth")]


@pytest.mark.parametrize("flow", FLOWS)
def test_codes_that_time_out_are_limited_to_three_per_challenge(
    service_factory: ServiceFactory, garmin: GarminEmulator, flow: LoginFlow
) -> None:
    first = service_factory.start(login_flow=flow)
    second = service_factory.start(login_flow=flow)
    garmin.add_user("slow@example.com", PASSWORD, mfa=True, mfa_code="135790")
    challenge = login(first, "slow", "slow@example.com").mfa_challenge_id
    assert challenge

    garmin.fail_next(VERIFY_MFA_PATH, None, count=6, delay=GARMIN_SLOWER_THAN_TIMEOUT)
    answers = []
    for index, replica in enumerate([first, second, first, second, first, second]):
        request = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code=f"00000{index}")

        def submit(replica: Replica = replica, request: pb.SubmitMfaRequest = request) -> object:
            return replica.call("SubmitMfa", request)

        answers.append(expect_failure(submit).code)
    time.sleep(GARMIN_SLOWER_THAN_TIMEOUT + 0.5)  # Garmin judges the last ones

    judged = garmin.request_count(VERIFY_MFA_PATH)
    assert judged <= 3, (
        f"{judged} wrong codes of one challenge reached Garmin (answers: {answers}); at most 3 may"
    )


@pytest.mark.parametrize("flow", FLOWS)
def test_a_retry_after_a_timeout_does_not_send_the_code_while_garmin_judges_the_first(
    service_factory: ServiceFactory, garmin: GarminEmulator, flow: LoginFlow
) -> None:
    first = service_factory.start(login_flow=flow)
    second = service_factory.start(login_flow=flow)
    garmin.add_user("retry@example.com", PASSWORD, mfa=True, mfa_code="246810")
    challenge = login(first, "retry", "retry@example.com").mfa_challenge_id
    request = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="246810")

    garmin.fail_next(VERIFY_MFA_PATH, None, count=1, delay=GARMIN_SLOWER_THAN_TIMEOUT)
    timed_out = expect_failure(lambda: first.call("SubmitMfa", request))
    assert timed_out.code == grpc.StatusCode.UNAVAILABLE
    before = garmin.request_count(VERIFY_MFA_PATH)

    # The client retries at once, as gRPC clients do after UNAVAILABLE: the first code is
    # still with Garmin, so the challenge must still be claimed (ABORTED MFA_CHALLENGE_BUSY).
    try:
        second.call("SubmitMfa", request)
        retried = "OK"
    except grpc.RpcError as error:
        retried = error.code().name
    sent_meanwhile = garmin.request_count(VERIFY_MFA_PATH) - before
    time.sleep(GARMIN_SLOWER_THAN_TIMEOUT)
    assert sent_meanwhile == 0, (
        f"the retry sent the code to Garmin again (answered {retried}) while Garmin was "
        "still judging the first POST of it"
    )
