"""Garmin's MFA_REQUIRED answer names the method in `customerMfaInfo.mfaLastMethodUsed`;
the service echoes it back to Garmin with the code, and shows it (LoginResponse, the
challenge row's `mfa_method`).

Before: the word went unchecked into the row and the answer. A text neither a database nor
a protobuf string can hold (a NUL on PostgreSQL; a lone UTF-16 surrogate, which JSON's
`\\ud800` escape yields, on both) made Login answer INTERNAL after Garmin had started the
pending sign-in and the user's login attempt was spent. Now what is shown leaves such
characters out, and the sealed pending login keeps Garmin's word, so the code's check
(the emulator refuses any other `mfaMethod`) still succeeds."""

from __future__ import annotations

import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("method", "shown"),
    [
        ("\ud800", "unknown"),
        ("sms\u0000", "sms"),
        ("t\u0007otp\ud83d", "totp"),
        ("x" * 40, "x" * 32),
        ("email", "email"),  # a guard: the common case as before
    ],
    ids=["lone_surrogate", "nul", "control_and_surrogate", "long", "plain"],
)
def test_an_odd_mfa_method_in_garmins_answer_is_shown_cleaned_and_echoed_as_sent(
    service_factory: ServiceFactory, garmin: GarminEmulator, method: str, shown: str
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    user = garmin.add_user("odd@example.com", PASSWORD, mfa=True, mfa_code="123456")
    user.mfa_method = method  # what Garmin's JSON answer names

    answer = login(replica, "odd", "odd@example.com")  # before: INTERNAL
    assert answer.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
    assert answer.mfa_method == shown

    done = replica.call(
        "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=answer.mfa_challenge_id, code="123456")
    )
    assert done.status.state == pb.SESSION_STATE_ACTIVE
