"""Promises of protos/garmin_auth/v1/garmin_auth.proto and of the README's lease protocol
about what a status shows and what a lease call answers. Each test failed before its fix:
- an MFA_PENDING status showed the reason and time of the session's earlier end;
- LeaseSession explained its refusal by the stored state (MFA_PENDING) rather than the one
  callers see (NOT_CONNECTED once the login was abandoned), answering SESSION_NOT_ACTIVE;
- LeaseNextSession gave up after five skipped sessions, so five unreadable rows first in the
  queue hid a due session behind them ("nothing is due")."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc

from auth_service.config import Settings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import connect
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login
from tests.storage.test_ciphertext_rollback import overwrite_blob


def test_invalidated_reason_is_empty_unless_auth_expired(
    service: Replica, garmin: GarminEmulator
) -> None:
    """SessionStatus.invalidated_reason: "why the session became AUTH_EXPIRED; empty
    otherwise"; invalidated_at: "unset otherwise". A user whose session expired and who logs
    in again with MFA is MFA_PENDING, yet both still carry the old invalidation."""
    garmin.add_user("ivy@example.com", PASSWORD, mfa=True, mfa_code="123456")
    first = login(service, "ivy", "ivy@example.com")
    service.call(
        "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=first.mfa_challenge_id, code="123456")
    )
    grant = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="ivy", holder="w"), role="worker"
    )
    service.call(
        "ReportInvalidated",
        pb.ReportInvalidatedRequest(lease_id=grant.lease.lease_id, reason="401 on the API"),
        role="worker",
    )

    again = login(service, "ivy", "ivy@example.com")
    assert again.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="ivy")).status
    assert status.state == pb.SESSION_STATE_MFA_PENDING
    assert status.invalidated_reason == ""
    assert not status.HasField("invalidated_at")


def test_lease_of_a_user_whose_status_is_not_connected_answers_session_not_found(
    service_factory: ServiceFactory, service_settings: Settings, garmin: GarminEmulator
) -> None:
    """README, lease errors: NOT_FOUND SESSION_NOT_FOUND is LeaseSession's answer for "the
    user never connected Garmin"; SESSION_NOT_ACTIVE is for "MFA pending, or AUTH_EXPIRED".
    A user who started a login and never entered the code reads NOT_CONNECTED once the
    challenge is gone (GetStatus, ListSessions), but LeaseSession still answers
    FAILED_PRECONDITION SESSION_NOT_ACTIVE "the session is MFA_PENDING"."""
    # A short challenge lifetime stands for the default 10 minutes passing.
    service = service_factory.start(
        login=replace(service_settings.login, mfa_challenge_ttl_seconds=1.0)
    )
    garmin.add_user("abe@example.com", PASSWORD, mfa=True, mfa_code="123456")
    assert login(service, "abe", "abe@example.com").outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
    time.sleep(1.5)

    status = service.call("GetStatus", pb.GetStatusRequest(user_id="abe")).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    refused = expect_failure(
        lambda: service.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id="abe", holder="w"), role="worker"
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND"), (
        refused
    )


def test_lease_next_session_leases_a_due_session_behind_unreadable_ones(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    """LeaseNextSession: "the response has no lease when nothing is due"; README: a session
    that fails to decrypt is never answered, "it skips such a session for the next one".
    With five unreadable sessions first in the queue (a key left out of
    GARMIN_AUTH_ENCRYPTION_KEYS), the call answers "nothing is due" although a readable,
    due session waits behind them: `garmin-sync-worker --all` ends its run there."""
    for index in range(5):
        connect(service, garmin, f"a{index}-unreadable")
        overwrite_blob(database_url, f"a{index}-unreadable", b"\x02not-a-sealed-session")
    connect(service, garmin, "b-readable")

    answer = service.call("LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"), role="worker")
    assert answer.HasField("lease"), "no lease, yet b-readable is ACTIVE, free and due"
    assert answer.lease.user_id == "b-readable"


def test_lease_of_a_user_waiting_for_the_mfa_code_answers_session_not_active(
    service: Replica, garmin: GarminEmulator
) -> None:
    garmin.add_user("kai@example.com", PASSWORD, mfa=True, mfa_code="123456")
    assert login(service, "kai", "kai@example.com").outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED

    refused = expect_failure(
        lambda: service.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id="kai", holder="w"), role="worker"
        )
    )

    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_ACTIVE",
    )
