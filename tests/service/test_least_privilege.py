"""Least-privilege leases (issue 13), over real gRPC, the emulator and both databases: a
`worker` gets an access token and nothing that outlives it, `worker_full` gets the session and
may report it refreshed (never another account's), RefreshLease serves the holder only, and a
scoped caller leases only its users."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from auth_service.api.callers import CallersFileError, parse_callers, token_sha256
from auth_service.crypto import Keyring
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.session_proto import tokens_from_proto, tokens_to_proto
from garmin_emulator import EXCHANGE_PATH, GarminEmulator
from tests.fixtures.servers import ROLE_TOKENS, Replica, ServiceFactory, expect_failure
from tests.reliability import SkewedClock
from tests.worker import PASSWORD, connect, email_of, stored_row, stored_tokens

pytestmark = pytest.mark.timeout(60)

LEASE_LOST = (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")


def lease(service: Replica, user_id: str, role: str = "worker") -> pb.LeaseSessionResponse:
    request = pb.LeaseSessionRequest(user_id=user_id, holder="w")
    answer: pb.LeaseSessionResponse = service.call("LeaseSession", request, role=role)
    return answer


def refresh(service: Replica, lease_id: str, version: int, role: str = "worker") -> Any:
    request = pb.RefreshLeaseRequest(lease_id=lease_id, session_version=version)
    return service.call("RefreshLease", request, role=role)


def test_a_worker_answer_never_carries_a_long_lived_secret(
    service: Replica, garmin: GarminEmulator, database_url: str, keyring: Keyring
) -> None:
    connect(service, garmin, "ann")
    connect(service, garmin, "bob")
    tokens = stored_tokens(database_url, keyring, "ann")
    assert tokens is not None
    answers: list[Any] = []
    granted = lease(service, "ann")
    answers.append(granted)
    assert not granted.HasField("session")
    assert granted.access.token == tokens.oauth2.access_token
    assert granted.access.domain == "garmin.com"
    assert granted.access.expires_at.ToDatetime() > granted.lease.expires_at.ToDatetime()
    lease_id = granted.lease.lease_id
    answers.append(service.call("RenewLease", pb.RenewLeaseRequest(lease_id=lease_id), "worker"))
    answers.append(refresh(service, lease_id, granted.status.session_version))
    answers.append(service.call("GetStatus", pb.GetStatusRequest(user_id="ann"), "worker"))
    answers.append(
        service.call("ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease_id), "worker")
    )
    following = service.call("LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"), "worker")
    assert following.HasField("access")
    assert not following.HasField("session")
    answers.append(following)
    answers.append(
        service.call(
            "ReportInvalidated",
            pb.ReportInvalidatedRequest(lease_id=following.lease.lease_id, reason="401"),
            "worker",
        )
    )
    secrets: set[str] = set()
    for user in ("ann", "bob"):
        for stored in (stored_tokens(database_url, keyring, user), tokens):
            if stored is not None and stored.oauth1 is not None:
                secrets |= {stored.oauth1.oauth_token, stored.oauth1.oauth_token_secret}
                secrets.add(stored.oauth2.refresh_token)
    assert len(secrets) >= 3
    for answer in answers:
        wire = answer.SerializeToString()
        for secret in secrets:
            assert secret.encode() not in wire, type(answer).__name__


def test_worker_full_gets_the_session_and_may_report_it_refreshed(
    service: Replica, garmin: GarminEmulator
) -> None:
    connect(service, garmin, "cat")
    granted = lease(service, "cat", role="worker_full")
    assert granted.session.oauth1.oauth_token
    assert granted.access.token == granted.session.oauth2.access_token
    refreshed = tokens_from_proto(granted.session)
    refreshed = replace(refreshed, oauth2=replace(refreshed.oauth2, access_token="eyJ-rotated"))
    request = pb.ReportRefreshedRequest(
        lease_id=granted.lease.lease_id, session=tokens_to_proto(refreshed)
    )
    reported = service.call("ReportRefreshed", request, "worker_full")
    assert reported.status.session_version == granted.status.session_version + 1
    # A plain worker may not report at all.
    refused = expect_failure(lambda: service.call("ReportRefreshed", request, "worker"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")


def test_a_report_of_another_accounts_session_is_refused_and_changes_nothing(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    connect(service, garmin, "dan")
    connect(service, garmin, "eve")
    eves = lease(service, "eve", role="worker_full").session
    granted = lease(service, "dan", role="worker_full")
    before = stored_row(database_url, "dan")
    request = pb.ReportRefreshedRequest(lease_id=granted.lease.lease_id, session=eves)
    refused = expect_failure(lambda: service.call("ReportRefreshed", request, "worker_full"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert "session.oauth1" in refused.field_violations
    after = stored_row(database_url, "dan")
    assert (after.session_ciphertext, after.session_version, after.lease_id) == (
        before.session_ciphertext,
        before.session_version,
        before.lease_id,
    )


def test_refresh_lease_refreshes_once_per_version(
    service: Replica, garmin: GarminEmulator, database_url: str, keyring: Keyring
) -> None:
    email = connect(service, garmin, "fay")
    granted = lease(service, "fay")
    version = granted.status.session_version
    exchanges = garmin.request_count(EXCHANGE_PATH)

    fresh = refresh(service, granted.lease.lease_id, version)
    assert fresh.access.token != granted.access.token
    assert fresh.status.session_version == version + 1
    assert garmin.request_count(EXCHANGE_PATH) == exchanges + 1
    stored = stored_tokens(database_url, keyring, "fay")
    assert stored is not None
    assert stored.oauth2.access_token == fresh.access.token
    # A holder whose token is older than the stored one gets the stored one: no Garmin call.
    again = refresh(service, granted.lease.lease_id, version)
    assert again.access.token == fresh.access.token
    assert garmin.request_count(EXCHANGE_PATH) == exchanges + 1
    assert garmin.exchange_count(email) == 2  # the login's and this one


def test_refresh_lease_by_anyone_but_the_holder_is_lease_lost(
    service: Replica, garmin: GarminEmulator
) -> None:
    connect(service, garmin, "gus")
    granted = lease(service, "gus")
    lease_id, version = granted.lease.lease_id, granted.status.session_version
    exchanges = garmin.request_count(EXCHANGE_PATH)
    # Another caller holding the lease id (worker_full may call RefreshLease too).
    other = expect_failure(lambda: refresh(service, lease_id, version, role="worker_full"))
    assert (other.code, other.reason) == LEASE_LOST
    for rpc, request in (
        ("RenewLease", pb.RenewLeaseRequest(lease_id=lease_id)),
        ("ReportInvalidated", pb.ReportInvalidatedRequest(lease_id=lease_id, reason="401")),
        ("ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease_id)),
    ):
        stolen = expect_failure(lambda: service.call(rpc, request, "worker_full"))  # noqa: B023
        assert (stolen.code, stolen.reason) == LEASE_LOST, rpc
    # After release: lease lost for the holder too.
    service.call("ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease_id), "worker")
    released = expect_failure(lambda: refresh(service, lease_id, version))
    assert (released.code, released.reason) == LEASE_LOST
    assert garmin.request_count(EXCHANGE_PATH) == exchanges


def test_refresh_lease_on_a_revoked_session_ends_it(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    email = connect(service, garmin, "hal")
    granted = lease(service, "hal")
    garmin.revoke_tokens(email)
    rejected = expect_failure(
        lambda: refresh(service, granted.lease.lease_id, granted.status.session_version)
    )
    assert (rejected.code, rejected.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_ACTIVE",
    )
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="hal")).status
    assert status.state == pb.SESSION_STATE_AUTH_EXPIRED
    assert stored_row(database_url, "hal").session_ciphertext is None
    # The session is AUTH_EXPIRED now: its lease is gone with it.
    gone = expect_failure(
        lambda: refresh(service, granted.lease.lease_id, granted.status.session_version)
    )
    assert (gone.code, gone.reason) == LEASE_LOST


def test_refresh_lease_passes_on_garmins_rate_limit_with_retry_info(
    service: Replica, garmin: GarminEmulator
) -> None:
    connect(service, garmin, "ida")
    granted = lease(service, "ida")
    garmin.fail_next(EXCHANGE_PATH, 429)
    limited = expect_failure(
        lambda: refresh(service, granted.lease.lease_id, granted.status.session_version)
    )
    assert (limited.code, limited.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "GARMIN_RATE_LIMITED",
    )
    assert limited.retry_seconds is not None
    # The lease and session are untouched; asking again during the account's cooldown is
    # answered the same way without Garmin.
    calls = garmin.request_count(EXCHANGE_PATH)
    again = expect_failure(
        lambda: refresh(service, granted.lease.lease_id, granted.status.session_version)
    )
    assert again.reason == "GARMIN_RATE_LIMITED"
    assert garmin.request_count(EXCHANGE_PATH) == calls
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="ida")).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert status.lease.fencing_token == granted.lease.fencing_token


def test_a_scoped_worker_leases_only_its_users(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    scoped_token = "scoped-worker-token-0123456789abcdef"
    callers = tmp_path / "scoped-callers.toml"
    callers.write_text(
        f'[[callers]]\nname = "admin"\ntoken_sha256 = "{token_sha256(ROLE_TOKENS["admin"])}"\n'
        'roles = ["admin"]\n\n'
        f'[[callers]]\nname = "tenant-a-worker"\ntoken_sha256 = "{token_sha256(scoped_token)}"\n'
        'roles = ["worker"]\nuser_id_prefix = "a:"\n',
        encoding="utf-8",
    )
    service = service_factory.start(callers_file=callers)
    connect(service, garmin, "b:bea")
    connect(service, garmin, "a:ann")
    metadata = (("authorization", f"Bearer {scoped_token}"),)

    def as_scoped(rpc: str, request: Any) -> Any:
        return getattr(service.stub, rpc)(request, metadata=metadata, timeout=20)

    outside = expect_failure(
        lambda: as_scoped("LeaseSession", pb.LeaseSessionRequest(user_id="b:bea", holder="w"))
    )
    assert (outside.code, outside.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
    status = expect_failure(lambda: as_scoped("GetStatus", pb.GetStatusRequest(user_id="b:bea")))
    assert status.reason == "CALLER_FORBIDDEN"
    # "b:bea" is the most overdue (synced never, first in order); the scoped worker skips it.
    first = as_scoped("LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"))
    assert first.lease.user_id == "a:ann"
    assert not as_scoped("LeaseNextSession", pb.LeaseNextSessionRequest(holder="w")).HasField(
        "lease"
    )
    inside = as_scoped("GetStatus", pb.GetStatusRequest(user_id="a:ann"))
    assert inside.status.lease.holder == "w"


def test_a_scoped_caller_reaches_only_its_users_in_every_rpc(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """A user_id_prefix holds for listings and writes too, not just for leases and GetStatus
    (before: a scoped viewer listed every tenant's users and audit trail, and a scoped admin
    could delete, sign in or import any user). "t_" also checks that the prefix is matched
    literally: unescaped in LIKE, "_" would match the x of "tx:bea"."""
    tokens = {"viewer": "scoped-viewer-token-0123456789abcdef", "admin": "scoped-admin-token-0123"}
    callers = tmp_path / "scoped-callers.toml"
    callers.write_text(
        f'[[callers]]\nname = "admin"\ntoken_sha256 = "{token_sha256(ROLE_TOKENS["admin"])}"\n'
        'roles = ["admin"]\n\n'
        + "".join(
            f'[[callers]]\nname = "tenant-t-{role}"\n'
            f'token_sha256 = "{token_sha256(token)}"\n'
            f'roles = ["{role}"]\nuser_id_prefix = "t_"\n\n'
            for role, token in tokens.items()
        ),
        encoding="utf-8",
    )
    service = service_factory.start(callers_file=callers)
    connect(service, garmin, "t_ann")
    connect(service, garmin, "tx:bea")
    garmin.add_user("mia@example.com", "pw-of-mia", mfa=True, mfa_code="246802")
    challenge = service.call(
        "Login", pb.LoginRequest(user_id="tx:mia", email="mia@example.com", password="pw-of-mia")
    ).mfa_challenge_id

    def scoped(role: str, rpc: str, request: Any) -> Any:
        metadata = (("authorization", f"Bearer {tokens[role]}"),)
        return getattr(service.stub, rpc)(request, metadata=metadata, timeout=20)

    def forbidden(role: str, rpc: str, request: Any) -> None:
        refused = expect_failure(lambda: scoped(role, rpc, request))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_FORBIDDEN",
        ), rpc

    listed = scoped("viewer", "ListSessions", pb.ListSessionsRequest()).sessions
    assert [status.user_id for status in listed] == ["t_ann"]
    assert {s.user_id for s in service.call("ListSessions", pb.ListSessionsRequest()).sessions} >= {
        "t_ann",
        "tx:bea",
        "tx:mia",
    }
    events = scoped("viewer", "ListAuditEvents", pb.ListAuditEventsRequest()).events
    assert events
    assert {event.user_id for event in events} == {"t_ann"}
    forbidden("viewer", "ListAuditEvents", pb.ListAuditEventsRequest(user_id="tx:bea"))

    forbidden("admin", "DeleteSession", pb.DeleteSessionRequest(user_id="tx:bea"))
    forbidden(
        "admin",
        "Login",
        pb.LoginRequest(user_id="tx:bea", email=email_of("tx:bea"), password=PASSWORD),
    )
    forbidden(
        "admin",
        "ImportSession",
        pb.ImportSessionRequest(user_id="tx:bea", garth_token="not-even-read"),
    )
    forbidden(
        "admin",
        "ExchangeServiceTicket",
        pb.ExchangeServiceTicketRequest(user_id="tx:bea", service_ticket="ST-0-not-read"),
    )
    forbidden("admin", "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="246802"))
    assert status_of(service, "tx:bea").state == pb.SESSION_STATE_ACTIVE
    # The refused SubmitMfa left the challenge as it was: its own admin completes it.
    done = service.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="246802"))
    assert done.status.state == pb.SESSION_STATE_ACTIVE
    # Inside the scope, the scoped admin acts as any admin.
    scoped("admin", "DeleteSession", pb.DeleteSessionRequest(user_id="t_ann"))
    assert status_of(service, "t_ann").state == pb.SESSION_STATE_NOT_CONNECTED


def status_of(service: Replica, user_id: str) -> Any:
    return service.call("GetStatus", pb.GetStatusRequest(user_id=user_id)).status


def test_refresh_lease_by_a_stale_holder_is_lease_lost(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    now = service_factory.start()
    connect(now, garmin, "jon")
    stale = lease(now, "jon")
    # Two hours on, the lease has expired unreleased and another grant takes the session over.
    later = service_factory.start(clock=SkewedClock(timedelta(hours=2)))
    taken = lease(later, "jon")
    assert taken.lease.fencing_token == stale.lease.fencing_token + 1
    exchanges = garmin.request_count(EXCHANGE_PATH)
    for replica in (now, later):
        lost = expect_failure(
            lambda: refresh(replica, stale.lease.lease_id, stale.status.session_version)  # noqa: B023
        )
        assert (lost.code, lost.reason) == LEASE_LOST
    assert garmin.request_count(EXCHANGE_PATH) == exchanges


@pytest.mark.parametrize("prefix", ['""', '"a b"', '"a/"', "3", '"' + "a" * 129 + '"'])
def test_a_bad_user_id_prefix_is_refused(prefix: str) -> None:
    text = (
        f'[[callers]]\nname = "w"\ntoken_sha256 = "{"0" * 64}"\nroles = ["worker"]\n'
        f"user_id_prefix = {prefix}\n"
    )
    with pytest.raises(CallersFileError, match="user_id_prefix"):
        parse_callers(text, "callers.toml")


def test_roles_and_scope_are_read_from_the_callers_file() -> None:
    text = (
        f'[[callers]]\nname = "legacy"\ntoken_sha256 = "{"0" * 64}"\nroles = ["worker_full"]\n'
        f'[[callers]]\nname = "t"\ntoken_sha256 = "{"1" * 64}"\nroles = ["worker"]\n'
        'user_id_prefix = "tenant-a:"\n'
    )
    legacy, scoped = (entry.caller for entry in parse_callers(text, "callers.toml"))
    assert (legacy.full_sessions, legacy.user_id_prefix) == (True, None)
    assert (scoped.full_sessions, scoped.user_id_prefix) == (False, "tenant-a:")
    assert scoped.may_reach("tenant-a:ann")
    assert not scoped.may_reach("tenant-b:ann")


_TENANT_A_ENTRY = (
    '[[callers]]\nname = "tenant-a-worker"\n'
    f'token_sha256 = "{token_sha256("tenant-a-worker-token-0123456789abcdef")}"\n'
    'roles = ["worker_full"]\n'
)


def test_an_unknown_key_in_a_callers_entry_is_refused() -> None:
    """Before, keys the parser did not know were ignored: 'user_id_prefx' (a typo) parsed as
    an entry with no prefix, and that worker_full caller got every tenant's whole session."""
    text = _TENANT_A_ENTRY + 'user_id_prefx = "tenant-a:"\n'

    with pytest.raises(CallersFileError, match="user_id_prefx") as refused:
        parse_callers(text, "callers.toml")

    assert "tenant-a:" not in str(refused.value)  # key names only, never values


def test_one_token_in_two_callers_entries_is_refused() -> None:
    """Before, the last entry won: the token got its roles and scope by the file's order."""
    text = (
        _TENANT_A_ENTRY
        + 'user_id_prefix = "tenant-a:"\n\n'
        + _TENANT_A_ENTRY.replace("tenant-a-worker", "backend", 1).replace(
            '["worker_full"]', '["admin"]'
        )
    )

    with pytest.raises(CallersFileError, match="token_sha256 values must be unique"):
        parse_callers(text, "callers.toml")
