"""An MFA challenge whose stored ciphertext fails to decrypt answers the documented
`DATA_LOSS SECRET_UNREADABLE` and is kept, as a stored session is (README, "Errors"). Before,
SubmitMfa answered NOT_FOUND MFA_CHALLENGE_NOT_FOUND and deleted it, so a replica that merely
lacked a key destroyed a sign-in that a correctly configured replica could still complete.
"""

from __future__ import annotations

import grpc
from sqlalchemy import text

from auth_service.crypto import Keyring
from auth_service.storage.database import create_engine_for
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.service.test_rolling_key_rotation import configured_keyring

PASSWORD = "correct horse battery staple"
CODE = "246810"
K1 = Keyring.generate_key_value("k1")
K2 = Keyring.generate_key_value("k2")


def _challenge(replica: Replica, garmin: GarminEmulator, user: str) -> str:
    garmin.add_user(f"{user}@example.com", PASSWORD, mfa=True, mfa_code=CODE)
    answer = replica.call(
        "Login", pb.LoginRequest(user_id=user, email=f"{user}@example.com", password=PASSWORD)
    )
    assert answer.mfa_challenge_id
    return str(answer.mfa_challenge_id)


def _submit(replica: Replica, challenge: str) -> pb.SubmitMfaResponse:
    answer: pb.SubmitMfaResponse = replica.call(
        "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code=CODE)
    )
    return answer


def test_an_altered_challenge_answers_the_documented_secret_unreadable(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    challenge = _challenge(service, garmin, "ivy")
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as connection:
            # A database writer without the key alters the stored SSO state.
            blob = bytes(
                connection.execute(
                    text("SELECT pending_ciphertext FROM garmin_mfa_challenge")
                ).scalar_one()
            )
            connection.execute(
                text("UPDATE garmin_mfa_challenge SET pending_ciphertext = :blob"),
                {"blob": blob[:-1] + bytes([blob[-1] ^ 1])},
            )
    finally:
        engine.dispose()

    refused = expect_failure(lambda: _submit(service, challenge))

    assert (refused.code, refused.reason) == (grpc.StatusCode.DATA_LOSS, "SECRET_UNREADABLE"), (
        f"SubmitMfa answered {refused.code.name} {refused.reason}"
    )


def test_a_replica_missing_a_key_does_not_destroy_a_challenge_others_can_open(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    # Promoted replica: knows k1 and k2, encrypts with k2. A replica still started from the
    # old Secret (k1 only) serves beside it.
    promoted = service_factory.start(keyring=configured_keyring(f"{K1},{K2}", primary="k2"))
    stale = service_factory.start(keyring=configured_keyring(K1))
    challenge = _challenge(promoted, garmin, "joe")

    # The user's client happens to reach the stale replica first.
    first = expect_failure(lambda: _submit(stale, challenge))
    # Its retry reaches a replica that knows the key; Garmin still holds the sign-in.
    try:
        second = f"OK {pb.SessionState.Name(_submit(promoted, challenge).status.state)}"
    except grpc.RpcError:
        failure = expect_failure(lambda: _submit(promoted, challenge))
        second = f"{failure.code.name} {failure.reason}"

    seen = (first.code.name, first.reason, second)
    assert seen == ("DATA_LOSS", "SECRET_UNREADABLE", "OK SESSION_STATE_ACTIVE"), (
        f"stale replica answered {seen[0]} {seen[1]}; the replica with the key then answered "
        f"{seen[2]}"
    )
