"""The DI sign-in through real gRPC replicas on one database (SQLite and PostgreSQL), Garmin
played by the emulator over HTTP: Login with and without MFA (the code submitted to another
replica), refusals, the per-account sign-in cooldown after a 429, ExchangeServiceTicket,
ImportSession of python-garminconnect's token file, and legacy garth sessions beside them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import cast

import grpc
import pytest

from auth_service.crypto import Keyring
from auth_service.domain.clock import SystemClock
from auth_service.domain.models import SessionKind
from auth_service.domain.policies import ANDROID_SERVICE_URL, LoginFlow
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import (
    BLOCK_RATE_LIMITED,
    DI_TOKEN_PATH,
    KNOWN_DI_CLIENT_IDS,
    LOGIN_PATH,
    VERIFY_MFA_PATH,
    GarminEmulator,
)
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login, stored_row
from tests.upstream.di_http import ticket_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def di_pair(service_factory: ServiceFactory) -> tuple[Replica, Replica]:
    """Two replicas whose logins take the DI flow."""
    return (
        service_factory.start(login_flow=LoginFlow.DI),
        service_factory.start(login_flow=LoginFlow.DI),
    )


def status_of(replica: Replica, user_id: str) -> pb.SessionStatus:
    answer = replica.call("GetStatus", pb.GetStatusRequest(user_id=user_id))
    return cast(pb.SessionStatus, answer.status)


def test_login_creates_a_di_session(
    di_pair: tuple[Replica, Replica],
    garmin: GarminEmulator,
    database_url: str,
    keyring: Keyring,
) -> None:
    first, _ = di_pair
    garmin.add_user("dee@example.com", PASSWORD)
    answer = login(first, "dee", "dee@example.com")
    assert answer.outcome == pb.LOGIN_OUTCOME_AUTHENTICATED
    assert answer.status.state == pb.SESSION_STATE_ACTIVE
    assert answer.status.kind == pb.SESSION_KIND_DI_OAUTH2
    assert answer.status.HasField("refresh_token_expires_at")

    row = stored_row(database_url, "dee")
    assert row is not None
    assert row.session_ciphertext is not None
    tokens = SecretBox(keyring).open_tokens("dee", row.session_version, row.session_ciphertext)
    assert tokens.kind is SessionKind.DI_OAUTH2
    assert tokens.di_client_id == KNOWN_DI_CLIENT_IDS[0]
    assert garmin.live_refresh_tokens("dee@example.com") == [tokens.oauth2.refresh_token]

    lease = first.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="dee", holder="w"), role="worker_full"
    )
    assert lease.session.kind == pb.SESSION_KIND_DI_OAUTH2
    assert lease.session.di_client_id == KNOWN_DI_CLIENT_IDS[0]
    assert not lease.session.HasField("oauth1")


def test_mfa_login_completes_on_the_other_replica_after_a_wrong_code(
    di_pair: tuple[Replica, Replica], garmin: GarminEmulator
) -> None:
    first, second = di_pair
    garmin.add_user("mo@example.com", PASSWORD, mfa=True, mfa_code="135790")
    answer = login(first, "mo", "mo@example.com")
    assert answer.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
    assert answer.status.state == pb.SESSION_STATE_MFA_PENDING

    wrong = expect_failure(
        lambda: second.call(
            "SubmitMfa",
            pb.SubmitMfaRequest(mfa_challenge_id=answer.mfa_challenge_id, code="000000"),
        )
    )
    assert (wrong.code, wrong.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MFA_CODE_REJECTED")

    done = second.call(
        "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=answer.mfa_challenge_id, code="135790")
    )
    assert done.status.state == pb.SESSION_STATE_ACTIVE
    assert done.status.kind == pb.SESSION_KIND_DI_OAUTH2
    assert garmin.ticket_exchange_count("mo@example.com") == 1


def test_wrong_password_is_refused(
    di_pair: tuple[Replica, Replica], garmin: GarminEmulator
) -> None:
    garmin.add_user("pat@example.com", PASSWORD)
    refused = expect_failure(lambda: login(di_pair[0], "pat", "pat@example.com", "nope"))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "GARMIN_CREDENTIALS_REJECTED",
    )
    assert status_of(di_pair[1], "pat").state == pb.SESSION_STATE_NOT_CONNECTED


def test_a_429_starts_a_cooldown_every_replica_honours_without_calling_garmin(
    di_pair: tuple[Replica, Replica], garmin: GarminEmulator
) -> None:
    first, second = di_pair
    garmin.add_user("cal@example.com", PASSWORD)
    garmin.block_logins(BLOCK_RATE_LIMITED, retry_after=60)
    limited = expect_failure(lambda: login(first, "cal", "cal@example.com"))
    assert (limited.code, limited.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "GARMIN_RATE_LIMITED",
    )
    assert limited.retry_seconds == 7200  # the default cooldown, longer than Garmin's 60 s
    calls = garmin.request_count(LOGIN_PATH)

    for replica in (first, second):

        def again(replica: Replica = replica) -> None:
            login(replica, "cal", "cal@example.com")

        cooling = expect_failure(again)
        assert cooling.reason == "GARMIN_RATE_LIMITED"
        assert cooling.retry_seconds is not None
        assert 7000 < cooling.retry_seconds <= 7200
    assert garmin.request_count(LOGIN_PATH) == calls
    # Another account is not held back.
    garmin.add_user("dan@example.com", PASSWORD)
    assert login(second, "dan", "dan@example.com").status.state == pb.SESSION_STATE_ACTIVE


def test_a_429_on_the_mfa_code_holds_the_next_code_back_on_every_replica(
    di_pair: tuple[Replica, Replica], garmin: GarminEmulator
) -> None:
    """The sign-in cooldown covers the MFA step too (before: once Garmin's own Retry-After
    had passed, the next SubmitMfa went to Garmin's SSO again, 2 hours too soon)."""
    first, second = di_pair
    garmin.add_user("kit@example.com", PASSWORD, mfa=True, mfa_code="112233")
    challenge = login(first, "kit", "kit@example.com").mfa_challenge_id
    garmin.fail_next(VERIFY_MFA_PATH, 429, retry_after=1)
    submit = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="112233")
    limited = expect_failure(lambda: first.call("SubmitMfa", submit))
    assert (limited.code, limited.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "GARMIN_RATE_LIMITED",
    )
    assert limited.retry_seconds == 7200
    calls = garmin.request_count(VERIFY_MFA_PATH)
    time.sleep(1.5)  # Garmin's own Retry-After is over; the account's cooldown is not

    cooling = expect_failure(lambda: second.call("SubmitMfa", submit))
    assert cooling.reason == "GARMIN_RATE_LIMITED"
    assert cooling.retry_seconds is not None
    assert 7000 < cooling.retry_seconds <= 7200
    assert garmin.request_count(VERIFY_MFA_PATH) == calls
    assert status_of(second, "kit").state == pb.SESSION_STATE_MFA_PENDING


def test_a_sign_in_garmin_forgot_asks_for_a_new_login_not_another_code(
    di_pair: tuple[Replica, Replica], garmin: GarminEmulator
) -> None:
    """Garmin answers 401 to a code sent on a pending login it no longer holds (its lifetime
    is uncertain). Before: MFA_CODE_REJECTED, so the user spent the challenge's tries, each
    a trip to Garmin's SSO, on codes that could never work."""
    first, second = di_pair
    garmin.add_user("lea@example.com", PASSWORD, mfa=True, mfa_code="445566")
    garmin.di.pending_mfa_ttl_seconds = 0.5
    challenge = login(first, "lea", "lea@example.com").mfa_challenge_id
    time.sleep(1.0)
    submit = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="445566")

    gone = expect_failure(lambda: second.call("SubmitMfa", submit))

    assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND")
    assert "log in again" in gone.message
    calls = garmin.request_count(VERIFY_MFA_PATH)
    again = expect_failure(lambda: first.call("SubmitMfa", submit))
    assert again.reason == "MFA_CHALLENGE_NOT_FOUND"
    assert garmin.request_count(VERIFY_MFA_PATH) == calls  # the challenge is gone with it
    assert status_of(second, "lea").state == pb.SESSION_STATE_NOT_CONNECTED


def exchange(replica: Replica, ticket: str, service_url: str = "") -> pb.SessionStatus:
    request = pb.ExchangeServiceTicketRequest(
        user_id="tia", service_ticket=ticket, service_url=service_url
    )
    return cast(pb.SessionStatus, replica.call("ExchangeServiceTicket", request).status)


def test_a_ticket_is_exchanged_while_garmin_holds_the_accounts_sign_ins_back(
    di_pair: tuple[Replica, Replica], garmin: GarminEmulator
) -> None:
    """The documented way in while Garmin refuses our sign-ins: the user signs in in a
    browser and hands over the ticket. Before: the 429 on our Login had started an account
    cooldown that held back every call, the token exchange included, so the ticket (about a
    minute of life) died unused."""
    first, second = di_pair
    garmin.add_user("ula@example.com", PASSWORD)
    garmin.block_logins(BLOCK_RATE_LIMITED, retry_after=600)
    limited = expect_failure(lambda: login(first, "ula", "ula@example.com"))
    assert limited.reason == "GARMIN_RATE_LIMITED"
    ticket = ticket_for(garmin, "ula@example.com", PASSWORD)  # the user's browser

    request = pb.ExchangeServiceTicketRequest(user_id="ula", service_ticket=ticket)
    status = second.call("ExchangeServiceTicket", request).status

    assert status.state == pb.SESSION_STATE_ACTIVE
    # Sign-ins stay held back.
    assert expect_failure(lambda: login(second, "ula", "ula@example.com")).reason == (
        "GARMIN_RATE_LIMITED"
    )


def test_exchange_service_ticket(di_pair: tuple[Replica, Replica], garmin: GarminEmulator) -> None:
    first, second = di_pair
    garmin.add_user("tia@example.com", PASSWORD)
    ticket = ticket_for(garmin, "tia@example.com", PASSWORD)
    status = exchange(first, ticket)
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert status.kind == pb.SESSION_KIND_DI_OAUTH2

    # The same ticket again for the same user id: the stored session answers (a retry after
    # a lost answer; tests/service/test_ticket_retry.py), Garmin is not asked.
    assert exchange(second, ticket).state == pb.SESSION_STATE_ACTIVE

    ios_ticket = ticket_for(garmin, "tia@example.com", PASSWORD)
    wrong_url = expect_failure(lambda: exchange(first, ios_ticket, ANDROID_SERVICE_URL))
    assert wrong_url.reason == "SERVICE_TICKET_REJECTED"

    android = ticket_for(garmin, "tia@example.com", PASSWORD, service=ANDROID_SERVICE_URL)
    assert exchange(second, android, ANDROID_SERVICE_URL).state == pb.SESSION_STATE_ACTIVE
    assert garmin.ticket_exchange_count("tia@example.com") == 2


@pytest.mark.parametrize(
    ("ticket", "service_url", "fields"),
    [
        (
            "ST-0000001-abcdefghijABCDEFGHIJ-sso",
            "https://sso.garmin.com/sso/embed",
            ["service_url"],
        ),
        ("not-a-ticket", "", ["service_ticket"]),
        ("", "", ["service_ticket"]),
    ],
)
def test_exchange_refuses_malformed_requests_without_calling_garmin(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    ticket: str,
    service_url: str,
    fields: list[str],
) -> None:
    replica = service_factory.start()
    refused = expect_failure(lambda: exchange(replica, ticket, service_url))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.field_violations == fields
    assert garmin.request_count(DI_TOKEN_PATH) == 0


def import_file(replica: Replica, user_id: str, text: str) -> pb.SessionStatus:
    request = pb.ImportSessionRequest(user_id=user_id, garminconnect_tokens=text)
    return cast(pb.SessionStatus, replica.call("ImportSession", request).status)


def test_import_of_garmin_tokens_json_refreshes_it_once(
    service: Replica, garmin: GarminEmulator
) -> None:
    garmin.add_user("ivy@example.com", PASSWORD)
    file = garmin.garminconnect_tokens("ivy@example.com")
    status = import_file(service, "ivy", json.dumps(file))
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert status.kind == pb.SESSION_KIND_DI_OAUTH2
    assert status.HasField("refresh_token_expires_at")
    assert garmin.di_refresh_count("ivy@example.com") == 1
    # The file's refresh token is dead: the service holds the only live one.
    live = garmin.live_refresh_tokens("ivy@example.com")
    assert len(live) == 1
    assert file["di_refresh_token"] not in live


def test_import_of_a_garmin_cn_accounts_file_refreshes_at_diauth_garmin_cn(
    service: Replica, garmin: GarminEmulator, database_url: str, keyring: Keyring
) -> None:
    """The file names no domain: the JWT's issuer does, and the pair refreshes only there."""
    garmin.add_user("wen@example.com", PASSWORD)
    file = garmin.garminconnect_tokens("wen@example.com", domain="garmin.cn")
    status = import_file(service, "wen", json.dumps(file))
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert [(r.host, r.outcome) for r in garmin.token_requests] == [("diauth.garmin.cn", "issued")]
    row = stored_row(database_url, "wen")
    assert row is not None
    assert row.session_ciphertext is not None
    tokens = SecretBox(keyring).open_tokens("wen", row.session_version, row.session_ciphertext)
    assert tokens.domain == "garmin.cn"
    assert garmin.live_refresh_tokens("wen@example.com") == [tokens.oauth2.refresh_token]


def test_import_stores_nothing_while_garmin_is_busy(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    garmin.add_user("ike@example.com", PASSWORD)
    file = garmin.garminconnect_tokens("ike@example.com")
    garmin.fail_next(DI_TOKEN_PATH, 503)
    refused = expect_failure(lambda: import_file(service, "ike", json.dumps(file)))
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE")
    assert stored_row(database_url, "ike") is None
    # The file is untouched: the retry imports it.
    assert garmin.live_refresh_tokens("ike@example.com") == [file["di_refresh_token"]]
    status = import_file(service, "ike", json.dumps(file))
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert status.HasField("refresh_token_expires_at")


def test_import_of_a_dead_pair_stores_nothing(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    garmin.add_user("ned@example.com", PASSWORD)
    file = garmin.garminconnect_tokens("ned@example.com")
    garmin.revoke_tokens("ned@example.com")
    refused = expect_failure(lambda: import_file(service, "ned", json.dumps(file)))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.field_violations == ["garminconnect_tokens"]
    assert stored_row(database_url, "ned") is None


@pytest.mark.parametrize(
    "text",
    ["", "{}", "[1]", json.dumps({"di_token": "x", "di_refresh_token": "y", "di_client_id": "Z"})],
)
def test_import_refuses_malformed_token_files_and_stores_nothing(
    service: Replica, garmin: GarminEmulator, database_url: str, text: str
) -> None:
    refused = expect_failure(lambda: import_file(service, "bad", text))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.field_violations == ["garminconnect_tokens"]
    assert stored_row(database_url, "bad") is None
    assert garmin.request_count(DI_TOKEN_PATH) == 0


def test_legacy_garth_sessions_keep_working_beside_di_ones(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    legacy = service_factory.start(login_flow=LoginFlow.GARTH)
    current = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("old@example.com", PASSWORD)
    assert login(legacy, "old", "old@example.com").status.kind == pb.SESSION_KIND_GARTH
    # The DI replica refreshes and validates the garth session with garth.
    garmin.expire_access_tokens("old@example.com")
    checked = current.call("GetStatus", pb.GetStatusRequest(user_id="old", validate=True))
    assert checked.status.state == pb.SESSION_STATE_ACTIVE
    assert checked.status.kind == pb.SESSION_KIND_GARTH
    assert garmin.exchange_count("old@example.com") == 2


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_replica_whose_machine_clock_runs_ahead_stores_garmins_expiry(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database's clock rules every expiry decision, so the expiries decided on must be
    on it too. Before, the DI token endpoint turned Garmin's 'expires in' into an expiry on the
    machine clock (build_application gave it none): a replica 2 h ahead stored expiries 2 h
    late, and every replica handed out the dead token, unrefreshed, for those 2 hours."""
    real_now = SystemClock.now
    monkeypatch.setattr(SystemClock, "now", lambda self: real_now(self) + timedelta(hours=2))
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("sam@example.com", PASSWORD)

    login(replica, "sam", "sam@example.com")

    row = stored_row(database_url, "sam")
    assert row is not None
    assert row.access_token_expires_at is not None
    garmins = datetime.now(UTC) + timedelta(seconds=garmin.di.access_token_expires_in)
    assert abs(row.access_token_expires_at - garmins) < timedelta(seconds=10)
