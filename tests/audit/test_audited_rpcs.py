"""Each audited RPC writes exactly one event with the right fields (two when a lease grant is
followed by a central refresh), through the real gRPC server, on SQLite and PostgreSQL.

Callers are the fixtures' "admin-caller" and "worker-caller" (tests/fixtures/servers.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.policies import LoginSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import EXCHANGE_PATH, GarminEmulator
from tests.audit import (
    PASSWORD,
    AuditLog,
    connect,
    garmin_tokens,
    import_tokens,
    lease,
)
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure

ADMIN, WORKER, WORKER_FULL = "admin-caller", "worker-caller", "worker_full-caller"
UNKNOWN_LEASE_ID = "A" * 32


@pytest.fixture
def log(database_url: str) -> AuditLog:
    return AuditLog(database_url)


def _login(
    service: Replica, user_id: str, email: str, password: str = PASSWORD
) -> pb.LoginResponse:
    answer: pb.LoginResponse = service.call(
        "Login", pb.LoginRequest(user_id=user_id, email=email, password=password)
    )
    return answer


# --- connecting users ------------------------------------------------------------------


def test_login_without_mfa(service: Replica, garmin: GarminEmulator, log: AuditLog) -> None:
    garmin.add_user("ann@example.com", PASSWORD)
    before = datetime.now(UTC)
    _login(service, "ann", "ann@example.com")
    event = log.one()
    assert event.summary == (ADMIN, "Login", "ann", "OK", "OK")
    assert (event.lease_id, event.fencing_token) == (None, None)
    assert before - timedelta(seconds=1) <= event.occurred_at <= datetime.now(UTC)
    assert event.occurred_at.tzinfo is not None


def test_login_with_mfa_wrong_code_then_right_code(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    garmin.add_user("bob@example.com", PASSWORD, mfa=True, mfa_code="135790")
    challenge = _login(service, "bob", "bob@example.com").mfa_challenge_id
    assert log.one().summary == (ADMIN, "Login", "bob", "OK", "MFA_REQUIRED")

    refused = expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="000000")
        )
    )
    assert refused.reason == "MFA_CODE_REJECTED"
    assert log.one().summary == (
        ADMIN,
        "SubmitMfa",
        "bob",
        "PERMISSION_DENIED",
        "MFA_CODE_REJECTED",
    )

    service.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="135790"))
    assert log.one().summary == (ADMIN, "SubmitMfa", "bob", "OK", "OK")


def test_login_rate_limited_is_recorded(
    service_factory: ServiceFactory, garmin: GarminEmulator, log: AuditLog
) -> None:
    service = service_factory.start(login=LoginSettings(limit=1, window_seconds=3600))
    garmin.add_user("cat@example.com", PASSWORD)
    _login(service, "cat", "cat@example.com")
    log.mark()
    refused = expect_failure(lambda: _login(service, "cat", "cat@example.com"))
    assert refused.reason == "LOGIN_RATE_LIMITED"
    assert log.one().summary == (ADMIN, "Login", "cat", "RESOURCE_EXHAUSTED", "LOGIN_RATE_LIMITED")


def test_refusals_that_change_nothing_write_nothing(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    garmin.add_user("dan@example.com", PASSWORD)
    # Garmin refuses the password: no transaction is open, nothing changed (the RPC log says it).
    refused = expect_failure(lambda: _login(service, "dan", "dan@example.com", "wrong-password"))
    assert refused.reason == "GARMIN_CREDENTIALS_REJECTED"
    # Invalid requests, unknown challenges, reads.
    expect_failure(lambda: _login(service, "", "nope", ""))
    expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id="B" * 43, code="123456")
        )
    )
    service.call("GetStatus", pb.GetStatusRequest(user_id="dan"))
    service.call("ListSessions", pb.ListSessionsRequest())
    service.call("ListAuditEvents", pb.ListAuditEventsRequest(), role="viewer")
    # Deleting a user the service never knew changes nothing.
    service.call("DeleteSession", pb.DeleteSessionRequest(user_id="nobody"))
    # Forbidden callers are refused by the interceptor (logged there, not audited).
    expect_failure(
        lambda: service.call("DeleteSession", pb.DeleteSessionRequest(user_id="dan"), role="worker")
    )
    assert log.new() == []


def test_import_and_delete(service: Replica, garmin: GarminEmulator, log: AuditLog) -> None:
    import_tokens(service, "eve", garmin_tokens(service, garmin, "eve@example.com"))
    assert log.one().summary == (ADMIN, "ImportSession", "eve", "OK", "OK")
    service.call("DeleteSession", pb.DeleteSessionRequest(user_id="eve"))
    event = log.one()
    assert event.summary == (ADMIN, "DeleteSession", "eve", "OK", "OK")
    assert event.lease_id is None  # no live lease was ended


def test_delete_names_the_live_lease_it_ended(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    connect(service, garmin, "fay")
    grant = lease(service, "fay").lease
    log.mark()
    service.call("DeleteSession", pb.DeleteSessionRequest(user_id="fay"))
    event = log.one()
    assert event.summary == (ADMIN, "DeleteSession", "fay", "OK", "OK")
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )


def test_import_over_a_leased_session_names_the_lease_it_ended(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    tokens = connect(service, garmin, "gus")
    grant = lease(service, "gus").lease
    log.mark()
    import_tokens(service, "gus", tokens)
    event = log.one()
    assert event.summary == (ADMIN, "ImportSession", "gus", "OK", "OK")
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )


# --- GetStatus(validate) -----------------------------------------------------------------


def test_get_status_validate_records_what_it_stored(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    connect(service, garmin, "hal")
    connect(service, garmin, "ivy", expired=True)
    connect(service, garmin, "jon")
    garmin.revoke_tokens("jon@example.com")
    log.mark()

    # Only an admin may validate (issue 14); the event names it.
    service.call("GetStatus", pb.GetStatusRequest(user_id="hal", validate=True), role="admin")
    assert log.one().summary == (ADMIN, "GetStatus", "hal", "OK", "OK")
    service.call("GetStatus", pb.GetStatusRequest(user_id="ivy", validate=True))
    assert log.one().summary == (ADMIN, "GetStatus", "ivy", "OK", "SESSION_REFRESHED")
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="jon", validate=True)).status
    assert status.state == pb.SESSION_STATE_AUTH_EXPIRED
    assert log.one().summary == (ADMIN, "GetStatus", "jon", "OK", "SESSION_INVALIDATED")

    # Without validate, or when Garmin could not answer, nothing is stored and nothing recorded.
    service.call("GetStatus", pb.GetStatusRequest(user_id="hal"))
    garmin.fail_next("/userprofile-service/", 503, count=5)
    expect_failure(
        lambda: service.call("GetStatus", pb.GetStatusRequest(user_id="hal", validate=True))
    )
    garmin.clear_faults()
    assert log.new() == []


def test_get_status_validate_behind_a_lease_ends_nothing_the_holders_refresh_does(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    connect(service, garmin, "zed")
    granted = lease(service, "zed")
    grant = granted.lease
    log.mark()
    service.call("GetStatus", pb.GetStatusRequest(user_id="zed", validate=True))
    event = log.one()
    assert event.summary == (ADMIN, "GetStatus", "zed", "OK", "OK")
    assert event.lease_id is None  # the lease lives on

    garmin.revoke_tokens("zed@example.com")
    # A 401 to the stored access token is no verdict while a holder owns the refresh: the
    # validation is refused, ends nothing and records nothing.
    refused = expect_failure(
        lambda: service.call("GetStatus", pb.GetStatusRequest(user_id="zed", validate=True))
    )
    assert refused.reason == "LEASE_HELD"
    assert log.new() == []
    # The holder's refresh meets invalid_grant: that ends the session, naming the lease.
    ended = expect_failure(
        lambda: service.call(
            "RefreshLease",
            pb.RefreshLeaseRequest(
                lease_id=grant.lease_id, session_version=granted.status.session_version
            ),
            role="worker",
        )
    )
    assert ended.reason == "SESSION_NOT_ACTIVE"
    event = log.one()
    assert event.summary == (WORKER, "RefreshLease", "zed", "FAILED_PRECONDITION", ended.reason)
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )


# --- the lease protocol ------------------------------------------------------------------


def test_lease_renew_release(service: Replica, garmin: GarminEmulator, log: AuditLog) -> None:
    connect(service, garmin, "kim")
    log.mark()
    grant = lease(service, "kim").lease
    event = log.one()
    assert event.summary == (WORKER, "LeaseSession", "kim", "OK", "OK")
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )

    service.call("RenewLease", pb.RenewLeaseRequest(lease_id=grant.lease_id), role="worker")
    event = log.one()
    assert event.summary == (WORKER, "RenewLease", "kim", "OK", "OK")
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )

    service.call("ReleaseLease", pb.ReleaseLeaseRequest(lease_id=grant.lease_id), role="worker")
    event = log.one()
    assert event.summary == (WORKER, "ReleaseLease", "kim", "OK", "OK")
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )

    # A dead lease's renewal or release changes nothing and is not recorded.
    renewed = expect_failure(
        lambda: service.call(
            "RenewLease", pb.RenewLeaseRequest(lease_id=grant.lease_id), role="worker"
        )
    )
    released = expect_failure(
        lambda: service.call(
            "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=grant.lease_id), role="worker"
        )
    )
    assert renewed.reason == released.reason == "LEASE_LOST"
    # Nor is a refused grant.
    connect(service, garmin, "kit")
    log.mark()
    lease(service, "kit", holder="w-1")
    log.mark()
    assert expect_failure(lambda: lease(service, "kit", holder="w-2")).reason == "LEASE_HELD"
    assert expect_failure(lambda: lease(service, "nobody")).reason == "SESSION_NOT_FOUND"
    assert log.new() == []


def test_lease_next_session(service: Replica, garmin: GarminEmulator, log: AuditLog) -> None:
    empty = service.call("LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"), role="worker")
    assert not empty.HasField("lease")
    assert log.new() == []
    connect(service, garmin, "lea")
    log.mark()
    grant = service.call(
        "LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"), role="worker"
    ).lease
    event = log.one()
    assert event.summary == (WORKER, "LeaseNextSession", "lea", "OK", "OK")
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )


def test_reports_under_a_live_lease(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    connect(service, garmin, "max")
    granted = lease(service, "max", role="worker_full")
    grant = granted.lease
    log.mark()
    service.call(
        "ReportRefreshed",
        pb.ReportRefreshedRequest(lease_id=grant.lease_id, session=granted.session),
        role="worker_full",
    )
    event = log.one()
    assert event.summary == (WORKER_FULL, "ReportRefreshed", "max", "OK", "OK")
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )

    service.call(
        "ReportInvalidated",
        pb.ReportInvalidatedRequest(lease_id=grant.lease_id, reason="401 from the API"),
        role="worker_full",
    )
    event = log.one()
    assert event.summary == (WORKER_FULL, "ReportInvalidated", "max", "OK", "OK")
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )


def test_reports_under_a_dead_lease_are_recorded_as_lease_lost(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    connect(service, garmin, "ned")
    granted = lease(service, "ned", role="worker_full")
    grant = granted.lease
    service.call(
        "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=grant.lease_id), role="worker_full"
    )
    log.mark()

    refused = expect_failure(
        lambda: service.call(
            "ReportRefreshed",
            pb.ReportRefreshedRequest(lease_id=grant.lease_id, session=granted.session),
            role="worker_full",
        )
    )
    assert refused.reason == "LEASE_LOST"
    event = log.one()
    assert event.summary == (
        WORKER_FULL,
        "ReportRefreshed",
        "ned",
        "FAILED_PRECONDITION",
        "LEASE_LOST",
    )
    # Named by the lease's grant, even though the row no longer holds that lease.
    assert (event.lease_id, event.fencing_token) == (
        lease_digest(grant.lease_id),
        grant.fencing_token,
    )

    refused = expect_failure(
        lambda: service.call(
            "ReportInvalidated",
            pb.ReportInvalidatedRequest(lease_id=grant.lease_id, reason="401"),
            role="worker_full",
        )
    )
    assert refused.reason == "LEASE_LOST"
    event = log.one()
    assert event.summary == (
        WORKER_FULL,
        "ReportInvalidated",
        "ned",
        "FAILED_PRECONDITION",
        "LEASE_LOST",
    )
    assert event.lease_id == lease_digest(grant.lease_id)
    # The session itself was untouched.
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="ned")).status
    assert status.state == pb.SESSION_STATE_ACTIVE


def test_a_lease_id_the_service_never_granted_is_not_stored(
    service: Replica, log: AuditLog
) -> None:
    refused = expect_failure(
        lambda: service.call(
            "ReportInvalidated",
            pb.ReportInvalidatedRequest(lease_id=UNKNOWN_LEASE_ID, reason="401"),
            role="worker",
        )
    )
    assert refused.reason == "LEASE_LOST"
    event = log.one()
    assert event.summary == (WORKER, "ReportInvalidated", None, "FAILED_PRECONDITION", "LEASE_LOST")
    assert (event.lease_id, event.fencing_token) == (None, None)


# --- central refresh: the grant, then the refresh's own change ---------------------------


def test_grant_with_central_refresh_writes_the_grant_and_the_refresh(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    connect(service, garmin, "oli", expired=True)
    log.mark()
    grant = lease(service, "oli").lease
    events = log.new()
    assert [event.summary for event in events] == [
        (WORKER, "LeaseSession", "oli", "OK", "OK"),
        (WORKER, "LeaseSession", "oli", "OK", "SESSION_REFRESHED"),
    ]
    assert {(event.lease_id, event.fencing_token) for event in events} == {
        (lease_digest(grant.lease_id), grant.fencing_token)
    }


def test_central_refresh_rejected_records_the_invalidation(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    connect(service, garmin, "pam", expired=True)
    garmin.revoke_tokens("pam@example.com")
    log.mark()
    refused = expect_failure(lambda: lease(service, "pam"))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_ACTIVE",
    )
    grant_event, invalidated = log.new()
    assert grant_event.summary == (WORKER, "LeaseSession", "pam", "OK", "OK")
    assert invalidated.summary == (
        WORKER,
        "LeaseSession",
        "pam",
        "FAILED_PRECONDITION",
        "SESSION_NOT_ACTIVE",
    )
    assert invalidated.lease_id == grant_event.lease_id is not None
    assert invalidated.fencing_token == grant_event.fencing_token


def test_central_refresh_rate_limited_records_the_release(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    connect(service, garmin, "quin", expired=True)
    log.mark()
    garmin.fail_next(EXCHANGE_PATH, 429, retry_after=30)
    refused = expect_failure(lambda: lease(service, "quin"))
    assert refused.reason == "GARMIN_RATE_LIMITED"
    grant_event, cooling, released = log.new()
    assert grant_event.summary == (WORKER, "LeaseSession", "quin", "OK", "OK")
    # The account's cooldown started (no call for it reaches Garmin for Retry-After).
    assert cooling.summary == (WORKER, "LeaseSession", "quin", "OK", "GARMIN_COOLDOWN_STARTED")
    assert cooling.lease_id is None
    assert released.summary == (
        WORKER,
        "LeaseSession",
        "quin",
        "RESOURCE_EXHAUSTED",
        "GARMIN_RATE_LIMITED",
    )
    assert released.lease_id == grant_event.lease_id


def test_lease_next_skips_a_rejected_session_and_records_both(
    service: Replica, garmin: GarminEmulator, log: AuditLog
) -> None:
    # Both never synced: "ray" comes first (user_id order), is rejected, then "sue" is leased.
    connect(service, garmin, "ray", expired=True)
    garmin.revoke_tokens("ray@example.com")
    connect(service, garmin, "sue")
    log.mark()
    grant = service.call(
        "LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"), role="worker"
    ).lease
    assert grant.user_id == "sue"
    assert [event.summary for event in log.new()] == [
        (WORKER, "LeaseNextSession", "ray", "OK", "OK"),
        (WORKER, "LeaseNextSession", "ray", "FAILED_PRECONDITION", "SESSION_NOT_ACTIVE"),
        (WORKER, "LeaseNextSession", "sue", "OK", "OK"),
    ]
