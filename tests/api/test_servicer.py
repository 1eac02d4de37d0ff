"""Servicer unit tests with grpcio-testing: in-process, no network on the gRPC side.

They check the translation between protobuf and the domain, with the real domain services on
SQLite and the Garmin emulator behind them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc_testing
import pytest
from google.protobuf import duration_pb2, json_format, timestamp_pb2

from auth_service.api.callers import ROLES, Caller, current_caller
from auth_service.api.servicer import GarminAuthServicer
from auth_service.config import Settings
from auth_service.domain.errors import InvalidArgument
from auth_service.server import build_application
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

SERVICE = pb.DESCRIPTOR.services_by_name["GarminAuthService"]
PASSWORD = "correct horse battery staple"


class CalledAs:
    """The servicer as the interceptor runs it for `caller` (grpc_testing runs none)."""

    def __init__(self, servicer: GarminAuthServicer, caller: Caller) -> None:
        self._servicer = servicer
        self._caller = caller

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._servicer, name)

        def called(request: Any, context: grpc.ServicerContext) -> Any:
            token = current_caller.set(self._caller)
            try:
                return method(request, context)
            finally:
                current_caller.reset(token)

        return called


@pytest.fixture
def server(service_settings: Settings) -> Iterator[grpc_testing.Server]:
    application = build_application(service_settings)
    # Every role, worker_full included: the translations of the full session are tested too.
    servicer = CalledAs(GarminAuthServicer(application.use_cases), Caller("tester", ROLES))
    yield grpc_testing.server_from_dictionary({SERVICE: servicer}, grpc_testing.strict_real_time())
    application.engine.dispose()


def invoke(server: grpc_testing.Server, rpc: str, request: Any) -> tuple[Any, grpc.StatusCode]:
    call = server.invoke_unary_unary(SERVICE.methods_by_name[rpc], {}, request, None)
    response, _, code, _ = call.termination()
    return response, code


def connect(server: grpc_testing.Server, garmin: GarminEmulator, user_id: str) -> None:
    garmin.add_user(f"{user_id}@example.com", PASSWORD)
    _, code = invoke(
        server,
        "Login",
        pb.LoginRequest(user_id=user_id, email=f"{user_id}@example.com", password=PASSWORD),
    )
    assert code == grpc.StatusCode.OK


def test_login_translates_outcome_and_status(
    server: grpc_testing.Server, garmin: GarminEmulator
) -> None:
    garmin.add_user("mfa@example.com", PASSWORD, mfa=True, mfa_code="111222")
    response, code = invoke(
        server, "Login", pb.LoginRequest(user_id="m", email="mfa@example.com", password=PASSWORD)
    )
    assert code == grpc.StatusCode.OK
    assert response.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
    assert response.mfa_method == "email"
    assert response.HasField("mfa_expires_at")
    assert response.status.user_id == "m"
    assert response.status.state == pb.SESSION_STATE_MFA_PENDING


def test_lease_next_with_nothing_due_is_an_empty_response(server: grpc_testing.Server) -> None:
    response, code = invoke(server, "LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"))
    assert code == grpc.StatusCode.OK
    assert not response.HasField("lease")
    assert not response.HasField("session")


def test_lease_next_with_a_release_answers_the_released_status(
    server: grpc_testing.Server, garmin: GarminEmulator
) -> None:
    connect(server, garmin, "rita")
    granted, _ = invoke(server, "LeaseSession", pb.LeaseSessionRequest(user_id="rita", holder="w"))
    mark = timestamp_pb2.Timestamp()
    mark.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    request = pb.LeaseNextSessionRequest(
        holder="w",
        min_sync_interval=duration_pb2.Duration(seconds=3600),
        release=pb.ReleaseLeaseRequest(lease_id=granted.lease.lease_id, synced_through=mark),
    )

    response, code = invoke(server, "LeaseNextSession", request)

    assert code == grpc.StatusCode.OK
    assert response.released.user_id == "rita"
    assert response.released.synced_through == mark
    assert not response.released.HasField("lease")
    assert not response.HasField("lease")  # rita was the only user, synced just now
    # A plain LeaseNextSession leaves `released` unset.
    plain, _ = invoke(server, "LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"))
    assert plain.HasField("lease")
    assert not plain.HasField("released")


def test_a_release_timestamp_out_of_range_names_the_release_field(
    service_settings: Settings,
) -> None:
    application = build_application(service_settings)
    servicer = GarminAuthServicer(application.use_cases)
    request = pb.LeaseNextSessionRequest(
        holder="w",
        release=pb.ReleaseLeaseRequest(
            lease_id="x" * 32, synced_through=timestamp_pb2.Timestamp(seconds=-(10**13))
        ),
    )
    with pytest.raises(InvalidArgument) as raised:
        servicer.LeaseNextSession(request, None)  # type: ignore[arg-type]
    assert [v.field for v in raised.value.violations] == ["release.synced_through"]
    application.engine.dispose()


def test_lease_renew_release_round_trip(
    server: grpc_testing.Server, garmin: GarminEmulator
) -> None:
    connect(server, garmin, "rita")
    granted, _ = invoke(
        server,
        "LeaseSession",
        pb.LeaseSessionRequest(user_id="rita", holder="w", ttl=duration_pb2.Duration(seconds=120)),
    )
    lease = granted.lease
    assert lease.user_id == "rita"
    assert lease.fencing_token == 1
    span = lease.expires_at.ToDatetime() - lease.acquired_at.ToDatetime()
    assert span == timedelta(seconds=120)
    assert granted.session.oauth1.oauth_token
    assert granted.session.domain == "garmin.com"
    assert granted.access.token == granted.session.oauth2.access_token
    assert granted.access.domain == "garmin.com"
    assert granted.status.lease.lease_id == lease.lease_id

    renewed, _ = invoke(
        server,
        "RenewLease",
        pb.RenewLeaseRequest(lease_id=lease.lease_id, ttl=duration_pb2.Duration(seconds=600)),
    )
    assert renewed.lease.expires_at.ToDatetime() > lease.expires_at.ToDatetime()

    through = timestamp_pb2.Timestamp()
    through.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    released, _ = invoke(
        server,
        "ReleaseLease",
        pb.ReleaseLeaseRequest(lease_id=lease.lease_id, synced_through=through),
    )
    assert released.status.synced_through == through
    assert not released.status.HasField("lease")


def test_report_refreshed_converts_the_session_both_ways(
    server: grpc_testing.Server, garmin: GarminEmulator
) -> None:
    connect(server, garmin, "sam")
    granted, _ = invoke(server, "LeaseSession", pb.LeaseSessionRequest(user_id="sam", holder="w"))
    session = pb.GarminSession()
    session.CopyFrom(granted.session)
    session.oauth2.access_token = "eyJ-rotated-access-token-value"
    reported, code = invoke(
        server,
        "ReportRefreshed",
        pb.ReportRefreshedRequest(lease_id=granted.lease.lease_id, session=session),
    )
    assert code == grpc.StatusCode.OK
    assert reported.status.session_version == granted.status.session_version + 1
    invoke(server, "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=granted.lease.lease_id))
    again, _ = invoke(server, "LeaseSession", pb.LeaseSessionRequest(user_id="sam", holder="w"))
    assert again.session == session


@pytest.mark.parametrize(
    "request_",
    [
        pb.LeaseSessionRequest(user_id="u", holder="w", ttl=duration_pb2.Duration(seconds=10**12)),
        pb.LeaseSessionRequest(user_id="u", holder="w", ttl=duration_pb2.Duration(seconds=-5)),
        pb.LeaseSessionRequest(
            user_id="u", holder="w", ttl=duration_pb2.Duration(seconds=1, nanos=-(10**9))
        ),
    ],
)
def test_unusable_durations_are_invalid_arguments(
    service_settings: Settings, request_: pb.LeaseSessionRequest
) -> None:
    """Straight through the servicer: the domain error that the interceptor maps."""
    application = build_application(service_settings)
    servicer = GarminAuthServicer(application.use_cases)
    with pytest.raises(InvalidArgument) as raised:
        servicer.LeaseSession(request_, None)  # type: ignore[arg-type]
    assert [v.field for v in raised.value.violations] == ["ttl"]
    application.engine.dispose()


# Duration's own contract: "for durations of one second or more, a non-zero value for the
# nanos field must be of the same sign as the seconds field".
MIXED_SIGNS = duration_pb2.Duration(seconds=60, nanos=-1)
WELL_FORMED_LEASE_ID = "lease-id-0000000000000000"


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("LeaseSession", pb.LeaseSessionRequest(user_id="u", holder="w", ttl=MIXED_SIGNS), "ttl"),
        ("LeaseNextSession", pb.LeaseNextSessionRequest(holder="w", ttl=MIXED_SIGNS), "ttl"),
        (
            "LeaseNextSession",
            pb.LeaseNextSessionRequest(holder="w", min_sync_interval=MIXED_SIGNS),
            "min_sync_interval",
        ),
        ("RenewLease", pb.RenewLeaseRequest(lease_id=WELL_FORMED_LEASE_ID, ttl=MIXED_SIGNS), "ttl"),
    ],
    ids=["LeaseSession-ttl", "LeaseNextSession-ttl", "min_sync_interval", "RenewLease-ttl"],
)
def test_a_duration_whose_nanos_contradict_its_seconds_is_invalid(
    service_settings: Settings, method: str, request_: Any, field: str
) -> None:
    """Before: from_duration checked only |nanos| < 1 s, so {seconds: 60, nanos: -1} (which
    protobuf itself calls invalid: its JSON form cannot be written) was taken as 59.999999 s.
    Now: INVALID_ARGUMENT naming the field."""
    with pytest.raises(ValueError, match="Duration is not valid"):
        json_format.MessageToJson(MIXED_SIGNS)
    application = build_application(service_settings)
    servicer = CalledAs(GarminAuthServicer(application.use_cases), Caller("tester", ROLES))
    try:
        with pytest.raises(InvalidArgument) as raised:
            getattr(servicer, method)(request_, None)
    finally:
        application.engine.dispose()
    assert [v.field for v in raised.value.violations] == [field]


@pytest.mark.parametrize(
    "wait",
    [
        duration_pb2.Duration(seconds=-1),
        duration_pb2.Duration(nanos=-1000),
        duration_pb2.Duration(seconds=10**13),
        duration_pb2.Duration(seconds=1, nanos=-1),
    ],
    ids=["negative", "negative-micro", "out-of-range", "mixed-signs"],
)
def test_a_bad_garmin_retry_after_names_its_field_and_nothing_is_done(
    service_settings: Settings, garmin: GarminEmulator, wait: duration_pb2.Duration
) -> None:
    """ReleaseLease's garmin_retry_after (the wait a Connect API 429 asked the worker for):
    a negative duration, or none at all, is INVALID_ARGUMENT naming the field, alone or inside
    LeaseNextSession's release, and the lease stays live. (Before, the field did not exist.)"""
    application = build_application(service_settings)
    servicer = CalledAs(GarminAuthServicer(application.use_cases), Caller("tester", ROLES))
    garmin.add_user("rita@example.com", PASSWORD)
    servicer.Login(
        pb.LoginRequest(user_id="rita", email="rita@example.com", password=PASSWORD), None
    )
    lease = servicer.LeaseSession(pb.LeaseSessionRequest(user_id="rita", holder="w"), None).lease
    release = pb.ReleaseLeaseRequest(lease_id=lease.lease_id, garmin_retry_after=wait)

    with pytest.raises(InvalidArgument) as alone:
        servicer.ReleaseLease(release, None)
    with pytest.raises(InvalidArgument) as carried:
        servicer.LeaseNextSession(pb.LeaseNextSessionRequest(holder="w", release=release), None)

    assert [v.field for v in alone.value.violations] == ["garmin_retry_after"]
    assert [v.field for v in carried.value.violations] == ["release.garmin_retry_after"]
    # Nothing was done: the lease is live, and once released the user is granted again.
    servicer.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id), None)
    servicer.ReleaseLease(pb.ReleaseLeaseRequest(lease_id=lease.lease_id), None)
    again = servicer.LeaseSession(pb.LeaseSessionRequest(user_id="rita", holder="w"), None)
    assert again.lease.user_id == "rita"
    application.engine.dispose()
