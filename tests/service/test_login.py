"""Login and MFA through the real gRPC server, the real garth adapter and the Garmin emulator."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from typing import cast

import grpc
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from auth_service.crypto import Keyring
from auth_service.domain.policies import LoginSettings
from auth_service.storage.database import create_engine_for
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.connect_api import ConnectApi
from garmin_emulator import GarminEmulator
from tests.fixtures.logs import RecordingHandler
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure

PASSWORD = "correct horse battery staple"


def stored_row(database_url: str, user_id: str) -> GarminAuthenticationState | None:
    engine = create_engine_for(database_url)
    try:
        with Session(engine) as session:
            return session.scalars(
                select(GarminAuthenticationState).where(
                    GarminAuthenticationState.user_id == user_id
                )
            ).one_or_none()
    finally:
        engine.dispose()


def login(service: Replica, user_id: str, email: str, password: str = PASSWORD) -> pb.LoginResponse:
    request = pb.LoginRequest(user_id=user_id, email=email, password=password)
    return cast(pb.LoginResponse, service.call("Login", request))


def test_login_without_mfa_stores_an_encrypted_active_session(
    service: Replica, garmin: GarminEmulator, database_url: str, keyring: Keyring
) -> None:
    garmin.add_user("ann@example.com", PASSWORD)
    answer = login(service, "ann", "ann@example.com")
    assert answer.outcome == pb.LOGIN_OUTCOME_AUTHENTICATED
    assert answer.status.state == pb.SESSION_STATE_ACTIVE
    assert answer.status.HasField("last_validated_at")
    assert answer.mfa_challenge_id == ""

    row = stored_row(database_url, "ann")
    assert row is not None
    assert row.session_ciphertext is not None
    tokens = SecretBox(keyring).open_tokens("ann", row.session_version, row.session_ciphertext)
    # The stored tokens are the ones Garmin issued: Garmin accepts them.
    with ConnectApi(service.running.application.settings.upstream, tokens.domain) as api:
        profile = api.get_json("/userprofile-service/socialProfile", tokens.oauth2.access_token)
        assert profile["userName"]
    assert PASSWORD.encode() not in row.session_ciphertext
    assert tokens.oauth2.access_token.encode() not in row.session_ciphertext


def test_mfa_login_completes_on_another_replica(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str, keyring: Keyring
) -> None:
    """The seed's story: log in, enter the MFA code when asked, a valid session is stored."""
    garmin.add_user("bob@example.com", PASSWORD, mfa=True, mfa_code="135790")
    first, second = service_factory.start(), service_factory.start()

    answer = login(first, "bob", "bob@example.com")
    assert answer.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
    assert answer.mfa_method == "email"
    assert answer.status.state == pb.SESSION_STATE_MFA_PENDING
    assert len(answer.mfa_challenge_id) >= 32
    remaining = answer.mfa_expires_at.ToDatetime().timestamp() - time.time()
    assert 500 < remaining <= 600

    first.stop()  # the replica that took the Login is gone
    done = second.call(
        "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=answer.mfa_challenge_id, code="135790")
    )
    assert done.status.state == pb.SESSION_STATE_ACTIVE

    row = stored_row(database_url, "bob")
    assert row is not None
    assert row.state.value == "ACTIVE"
    assert row.session_ciphertext is not None
    tokens = SecretBox(keyring).open_tokens("bob", row.session_version, row.session_ciphertext)
    assert tokens.oauth1_token().oauth_token
    # A validation against Garmin proves the stored session is a working one.
    status = second.call("GetStatus", pb.GetStatusRequest(user_id="bob", validate=True)).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert status.last_validated_at.seconds >= int(time.time()) - 5


def test_wrong_code_then_right_code(service: Replica, garmin: GarminEmulator) -> None:
    garmin.add_user("cat@example.com", PASSWORD, mfa=True, mfa_code="112233")
    challenge = login(service, "cat", "cat@example.com").mfa_challenge_id
    wrong = expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="999999")
        )
    )
    assert (wrong.code, wrong.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MFA_CODE_REJECTED")
    done = service.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="112233"))
    assert done.status.state == pb.SESSION_STATE_ACTIVE
    # A completed challenge is gone: it completes at most once.
    again = expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="112233")
        )
    )
    assert (again.code, again.reason) == (grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND")


def test_three_wrong_codes_end_the_challenge(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    garmin.add_user("dan@example.com", PASSWORD, mfa=True, mfa_code="445566")
    challenge = login(service, "dan", "dan@example.com").mfa_challenge_id
    for _ in range(3):
        wrong = expect_failure(
            lambda: service.call(
                "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="000000")
            )
        )
        assert wrong.reason == "MFA_CODE_REJECTED"
    gone = expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="445566")
        )
    )
    assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND")
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="dan")).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED


def test_expired_challenge_is_not_found(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    service = service_factory.start(
        login=LoginSettings(limit=20, window_seconds=3600, mfa_challenge_ttl_seconds=0.5)
    )
    garmin.add_user("eve@example.com", PASSWORD, mfa=True, mfa_code="778899")
    challenge = login(service, "eve", "eve@example.com").mfa_challenge_id
    time.sleep(0.7)
    gone = expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="778899")
        )
    )
    assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND")
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="eve")).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED


def test_concurrent_submit_on_two_replicas_completes_once(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    garmin.add_user("fay@example.com", PASSWORD, mfa=True, mfa_code="121212")
    first, second = service_factory.start(), service_factory.start()
    challenge = login(first, "fay", "fay@example.com").mfa_challenge_id
    # Garmin takes a moment to answer, so both submissions overlap.
    garmin.fail_next("/mobile/api/mfa/verifyCode", None, count=2, delay=0.5)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def submit(replica: Replica) -> None:
        barrier.wait()
        try:
            replica.call(
                "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="121212")
            )
            outcomes.append("OK")
        except grpc.RpcError as error:
            outcomes.append(error.code().name)

    threads = [threading.Thread(target=submit, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) in (["ABORTED", "OK"], ["NOT_FOUND", "OK"])
    assert garmin.request_count("/mobile/api/mfa/verifyCode") == 1


def test_new_login_supersedes_a_pending_challenge(service: Replica, garmin: GarminEmulator) -> None:
    garmin.add_user("gus@example.com", PASSWORD, mfa=True, mfa_code="343434")
    old = login(service, "gus", "gus@example.com").mfa_challenge_id
    new = login(service, "gus", "gus@example.com").mfa_challenge_id
    assert old != new
    gone = expect_failure(
        lambda: service.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=old, code="343434"))
    )
    assert gone.reason == "MFA_CHALLENGE_NOT_FOUND"
    done = service.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=new, code="343434"))
    assert done.status.state == pb.SESSION_STATE_ACTIVE


def test_failed_and_pending_relogin_keep_the_active_session(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    garmin.add_user("hal@example.com", PASSWORD)
    login(service, "hal", "hal@example.com")
    before = stored_row(database_url, "hal")
    assert before is not None

    wrong = expect_failure(lambda: login(service, "hal", "hal@example.com", "wrong password"))
    assert (wrong.code, wrong.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "GARMIN_CREDENTIALS_REJECTED",
    )
    # Garmin now asks for MFA; the user abandons the challenge.
    garmin.add_user("hal@example.com", PASSWORD, mfa=True, mfa_code="565656")
    pending = login(service, "hal", "hal@example.com")
    assert pending.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
    assert pending.status.state == pb.SESSION_STATE_ACTIVE

    after = stored_row(database_url, "hal")
    assert after is not None
    assert after.session_ciphertext == before.session_ciphertext
    grant = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="hal", holder="worker-1"), role="worker"
    )
    assert grant.access.token


def test_garmin_rate_limit_and_outage_answer_retryable_errors(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    # Without the sign-in cooldown (tests/service/test_di_signin.py covers it): the account's
    # cooldown after a 429 is Garmin's Retry-After.
    service = service_factory.start(
        login=LoginSettings(limit=20, window_seconds=3600, signin_cooldown_seconds=0)
    )
    garmin.add_user("ida@example.com", PASSWORD)
    garmin.fail_next("/mobile/api/login", 429, retry_after=120)
    limited = expect_failure(lambda: login(service, "ida", "ida@example.com"))
    assert (limited.code, limited.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "GARMIN_RATE_LIMITED",
    )
    assert limited.retry_seconds == 120
    # Until Garmin's Retry-After has passed the account is not sent to Garmin again.
    calls = garmin.request_count("/mobile/api/login")
    waiting = expect_failure(lambda: login(service, "ida", "ida@example.com"))
    assert (waiting.reason, garmin.request_count("/mobile/api/login")) == (
        "GARMIN_RATE_LIMITED",
        calls,
    )

    garmin.add_user("ivo@example.com", PASSWORD)
    garmin.fail_next("/mobile/api/login", 503)
    down = expect_failure(lambda: login(service, "ivo", "ivo@example.com"))
    assert (down.code, down.reason) == (grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE")

    for user in ("ida", "ivo"):
        status = service.call("GetStatus", pb.GetStatusRequest(user_id=user)).status
        assert status.state == pb.SESSION_STATE_NOT_CONNECTED


def test_login_rate_limit_holds_across_replicas_without_calling_garmin(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    limits = LoginSettings(limit=2, window_seconds=3600)
    first, second = service_factory.start(login=limits), service_factory.start(login=limits)
    garmin.add_user("jo@example.com", PASSWORD)
    login(first, "jo", "jo@example.com")
    login(second, "jo", "jo@example.com")
    calls_before = garmin.request_count("/mobile/api/login")
    for replica in (first, second):

        def again(replica: Replica = replica) -> None:
            login(replica, "jo", "jo@example.com")

        limited = expect_failure(again)
        assert (limited.code, limited.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "LOGIN_RATE_LIMITED",
        )
        assert limited.retry_seconds is not None
        assert 3500 < limited.retry_seconds <= 3600
    assert garmin.request_count("/mobile/api/login") == calls_before
    # Another user is not affected.
    garmin.add_user("kim@example.com", PASSWORD)
    assert login(first, "kim", "kim@example.com").outcome == pb.LOGIN_OUTCOME_AUTHENTICATED


def test_pending_challenge_is_stored_encrypted(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    garmin.add_user("lou@example.com", PASSWORD, mfa=True, mfa_code="909090")
    challenge_id = login(service, "lou", "lou@example.com").mfa_challenge_id
    engine = create_engine_for(database_url)
    try:
        with Session(engine) as session:
            row = session.scalars(select(GarminMfaChallenge)).one()
    finally:
        engine.dispose()
    assert row.user_id == "lou"
    assert challenge_id not in row.challenge_id_sha256
    assert b"lou@example.com" not in row.pending_ciphertext
    assert row.expires_at - row.created_at == timedelta(minutes=10)


def test_passwords_and_mfa_codes_never_reach_the_logs(
    service_factory: ServiceFactory, garmin: GarminEmulator, no_secret_in_logs: RecordingHandler
) -> None:
    """MFA codes are too short for the suite-wide scan: look for them (and the password)
    explicitly, as whole digit runs, in every record of an MFA login with a wrong code."""
    garmin.add_user("mia@example.com", "pw-Xq7!unusual", mfa=True, mfa_code="918273")
    first, second = service_factory.start(), service_factory.start()
    challenge = login(first, "mia", "mia@example.com", "pw-Xq7!unusual").mfa_challenge_id
    expect_failure(
        lambda: second.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="564738")
        )
    )
    second.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="918273"))
    for replica in (first, second):  # the access log is written in batches: now
        assert replica.running.access_log is not None
        replica.running.access_log.flush()
    texts = "\n".join(text for _, text in no_secret_in_logs.texts)
    assert "SubmitMfa" in texts  # the flow was logged at all
    for secret in ("918273", "564738"):
        assert not re.search(rf"(?<!\d){secret}(?!\d)", texts)
    assert "pw-Xq7!unusual" not in texts
    assert challenge not in texts


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "email",
    ["ann\x00@example.com", "ann\x07@example.com", "ann@exa\x7fmple.com"],
    ids=["nul", "bel", "del"],
)
def test_an_email_with_control_characters_is_invalid_and_garmin_is_not_asked(
    service: Replica, garmin: GarminEmulator, email: str
) -> None:
    """No email address holds a control character (RFC 5321). Before: EMAIL_PATTERN
    (`[^@\\s]...`) let NUL, BEL and DEL through, so the Login went to Garmin, spent one of
    the user's sign-in attempts and answered PERMISSION_DENIED GARMIN_CREDENTIALS_REJECTED.
    Now: INVALID_ARGUMENT on `email`, Garmin not called."""
    garmin.reset_records()

    failure = expect_failure(
        lambda: service.call(
            "Login", pb.LoginRequest(user_id="ann", email=email, password=PASSWORD)
        )
    )

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.reason == "INVALID_ARGUMENT"
    assert failure.field_violations == ["email"]
    assert garmin.request_count() == 0
