"""The worker's gRPC client against fake services: subclasses of the generated servicer
served by a real in-process grpc.server on a loopback port, so every call crosses the wire
with its metadata, deadline and rich status as it does in production."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from sync_worker.client import AuthClient, AuthClientConfig
from sync_worker.client_errors import MALFORMED_GRANT, AuthServiceError
from sync_worker.lease_grants import AccessToken, LeasedSession, SessionState, SessionStatus
from sync_worker.runner import release_outcome

pytestmark = pytest.mark.timeout(30)

TOKEN = "worker-bearer-for-fakes"
TIMEOUT = 5.0
ATTEMPTS = 3
SYNCED = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
EXPIRES = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
ACCESS = pb.AccessToken(
    token="access-1", token_type="Bearer", expires_at=EXPIRES, domain="garmin.com"
)


def session_status(user_id: str = "ann") -> pb.SessionStatus:
    return pb.SessionStatus(
        user_id=user_id,
        state=pb.SESSION_STATE_ACTIVE,
        synced_through=SYNCED,
        session_version=7,
    )


def lease(lease_id: str = "lease-1") -> pb.Lease:
    return pb.Lease(
        lease_id=lease_id,
        user_id="ann",
        holder="w1",
        fencing_token=3,
        expires_at=EXPIRES,
    )


def abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    retry_after: timedelta | None = None,
) -> NoReturn:
    """Fail the call with a rich status, as the real service does."""
    details = []
    if reason:
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="garmin-auth"))
        details.append(packed)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(retry_after)
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    context.abort_with_status(rpc_status.to_status(status))


@dataclass
class Seen:
    """One call as the fake saw it."""

    rpc: str
    authorization: str
    time_remaining: float | None


@dataclass
class RecordingService(pb_grpc.GarminAuthServiceServicer):
    """Answers every worker RPC soundly and notes how each call arrived."""

    seen: list[Seen] = field(default_factory=list)
    refreshed: list[tuple[str, int]] = field(default_factory=list)
    invalidated: list[tuple[str, int]] = field(default_factory=list)
    access: pb.AccessToken = field(default_factory=lambda: ACCESS)
    next_due: bool = True

    def note(self, rpc: str, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        self.seen.append(Seen(rpc, str(metadata.get("authorization")), context.time_remaining()))

    def LeaseSession(
        self, request: pb.LeaseSessionRequest, context: grpc.ServicerContext
    ) -> pb.LeaseSessionResponse:
        self.note("LeaseSession", context)
        return pb.LeaseSessionResponse(lease=lease(), access=self.access, status=session_status())

    def LeaseNextSession(
        self, request: pb.LeaseNextSessionRequest, context: grpc.ServicerContext
    ) -> pb.LeaseNextSessionResponse:
        self.note("LeaseNextSession", context)
        if not self.next_due:
            return pb.LeaseNextSessionResponse()
        return pb.LeaseNextSessionResponse(
            lease=lease(), access=self.access, status=session_status()
        )

    def RenewLease(
        self, request: pb.RenewLeaseRequest, context: grpc.ServicerContext
    ) -> pb.RenewLeaseResponse:
        self.note("RenewLease", context)
        return pb.RenewLeaseResponse(lease=lease(request.lease_id))

    def ReleaseLease(
        self, request: pb.ReleaseLeaseRequest, context: grpc.ServicerContext
    ) -> pb.ReleaseLeaseResponse:
        self.note(f"ReleaseLease {request.lease_id}", context)
        return pb.ReleaseLeaseResponse(status=session_status())

    def RefreshLease(
        self, request: pb.RefreshLeaseRequest, context: grpc.ServicerContext
    ) -> pb.RefreshLeaseResponse:
        self.note("RefreshLease", context)
        self.refreshed.append((request.lease_id, request.session_version))
        fresh = pb.AccessToken()
        fresh.CopyFrom(self.access)
        fresh.token = "access-2"
        status = session_status()
        status.session_version += 1
        return pb.RefreshLeaseResponse(access=fresh, status=status)

    def ReportInvalidated(
        self, request: pb.ReportInvalidatedRequest, context: grpc.ServicerContext
    ) -> pb.ReportInvalidatedResponse:
        self.note("ReportInvalidated", context)
        self.invalidated.append((request.lease_id, request.session_version))
        return pb.ReportInvalidatedResponse(
            status=pb.SessionStatus(
                user_id="ann",
                state=pb.SESSION_STATE_AUTH_EXPIRED,
                invalidated_reason=request.reason,
            )
        )

    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetStatusResponse:
        self.note("GetStatus", context)
        return pb.GetStatusResponse(status=session_status(request.user_id))


@dataclass
class FailingStatus(pb_grpc.GarminAuthServiceServicer):
    """GetStatus fails with what ``fail`` does, every time or for the first ``failures``."""

    fail: Callable[[grpc.ServicerContext], NoReturn]
    failures: int = 1_000
    calls: int = 0

    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetStatusResponse:
        self.calls += 1
        if self.calls <= self.failures:
            self.fail(context)
        return pb.GetStatusResponse(status=session_status(request.user_id))


@contextmanager
def serving(servicer: pb_grpc.GarminAuthServiceServicer) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GarminAuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@contextmanager
def client_of(
    servicer: pb_grpc.GarminAuthServiceServicer, sleeps: list[float], timeout: float = TIMEOUT
) -> Iterator[AuthClient]:
    with serving(servicer) as target:
        config = AuthClientConfig(
            target=target, token=TOKEN, timeout_seconds=timeout, attempts=ATTEMPTS
        )
        with AuthClient(config, sleep=sleeps.append) as client:
            yield client


def test_every_call_carries_the_bearer_token_and_a_deadline_and_returns_our_types() -> None:
    fake = RecordingService()
    with client_of(fake, []) as client:
        granted = client.lease_session("ann", "w1", timedelta(minutes=5))
        assert isinstance(granted, LeasedSession)
        assert (granted.lease_id, granted.user_id, granted.fencing_token) == ("lease-1", "ann", 3)
        assert granted.expires_at == EXPIRES
        assert granted.synced_through == SYNCED
        assert granted.access == AccessToken("access-1", "Bearer", EXPIRES, "garmin.com", 7)
        assert "access-1" not in repr(granted) + repr(granted.access)
        assert granted.status == SessionStatus(
            user_id="ann",
            state=SessionState.ACTIVE,
            session_version=7,
            synced_through=SYNCED,
            last_synced_at=None,
            invalidated_reason="",
        )
        assert isinstance(client.lease_next_session("w1", None, None), LeasedSession)
        assert client.renew_lease("lease-1", None) == EXPIRES
        assert client.release_lease("lease-1", SYNCED) == granted.status
        assert client.refresh_lease("lease-1", 7) == AccessToken(
            "access-2", "Bearer", EXPIRES, "garmin.com", 8
        )
        invalidated = client.report_invalidated("lease-1", "401 from Garmin", 8)
        assert invalidated.state is SessionState.AUTH_EXPIRED
        assert invalidated.invalidated_reason == "401 from Garmin"
        assert client.get_status("bob").user_id == "bob"
        fake.next_due = False
        assert client.lease_next_session("w1", None, None) is None

    assert fake.refreshed == [("lease-1", 7)]
    assert fake.invalidated == [("lease-1", 8)]
    assert [seen.rpc for seen in fake.seen] == [
        "LeaseSession",
        "LeaseNextSession",
        "RenewLease",
        "ReleaseLease lease-1",
        "RefreshLease",
        "ReportInvalidated",
        "GetStatus",
        "LeaseNextSession",
    ]
    for seen in fake.seen:
        assert seen.authorization == f"Bearer {TOKEN}"
        # The deadline the client set, less the trip (the two clocks round differently).
        assert seen.time_remaining == pytest.approx(TIMEOUT, abs=1.0)


def test_a_slow_service_trips_the_deadline_and_is_not_retried() -> None:
    answered = threading.Event()

    def stall(context: grpc.ServicerContext) -> NoReturn:
        answered.wait(timeout=10)
        abort(context, grpc.StatusCode.INTERNAL, "too late")

    fake, sleeps = FailingStatus(stall), list[float]()
    try:
        with client_of(fake, sleeps, timeout=0.2) as client:
            with pytest.raises(AuthServiceError) as raised:
                client.get_status("ann")
            answered.set()
    finally:
        answered.set()
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert raised.value.unreachable
    assert fake.calls == 1
    assert sleeps == []


def test_unavailable_is_retried_up_to_the_bound_then_raised() -> None:
    fake = FailingStatus(lambda context: abort(context, grpc.StatusCode.UNAVAILABLE, "restarting"))
    sleeps: list[float] = []
    with client_of(fake, sleeps) as client, pytest.raises(AuthServiceError) as raised:
        client.get_status("ann")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.message == "restarting"
    assert fake.calls == ATTEMPTS
    # Exponential steps (0.2 s, then 0.4 s by default), each +-20%.
    assert len(sleeps) == ATTEMPTS - 1
    assert all(
        0.8 * step <= delay <= 1.2 * step for delay, step in zip(sleeps, (0.2, 0.4), strict=True)
    )


def test_the_default_retries_wait_about_6_seconds_in_all() -> None:
    """README, exit 3: a call still failing after 6 s (+-20%) of retries, enough for a
    replica's restart. Before, full jitter (0 to each step) waited 3 s on average and as
    little as 1.8 s in four tries, so a restart of a few seconds ended the run."""
    fake = FailingStatus(lambda context: abort(context, grpc.StatusCode.UNAVAILABLE, "down"))
    totals = []
    with serving(fake) as target:
        config = AuthClientConfig(target=target, token=TOKEN, timeout_seconds=TIMEOUT)
        for _ in range(20):
            sleeps: list[float] = []
            with AuthClient(config, sleep=sleeps.append) as client, pytest.raises(AuthServiceError):
                client.get_status("ann")
            totals.append(sum(sleeps))
    assert all(4.8 <= total <= 7.2 for total in totals), sorted(totals)


def test_unavailable_then_an_answer_returns_the_answer() -> None:
    fake = FailingStatus(
        lambda context: abort(context, grpc.StatusCode.UNAVAILABLE, "restarting"),
        failures=ATTEMPTS - 1,
    )
    sleeps: list[float] = []
    with client_of(fake, sleeps) as client:
        assert client.get_status("ann").user_id == "ann"
    assert fake.calls == ATTEMPTS
    assert len(sleeps) == ATTEMPTS - 1


def test_the_services_database_unavailable_is_retried() -> None:
    fake = FailingStatus(
        lambda context: abort(
            context, grpc.StatusCode.UNAVAILABLE, "no database", reason="DATABASE_UNAVAILABLE"
        ),
        failures=ATTEMPTS - 1,
    )
    sleeps: list[float] = []
    with client_of(fake, sleeps) as client:
        assert client.get_status("ann").user_id == "ann"
    assert fake.calls == ATTEMPTS


def test_garmin_unavailable_is_not_retried() -> None:
    """The service asked Garmin and Garmin failed: sending the call again would ask Garmin
    again (a RefreshLease 3 times for one expired token during a 503, before the fix), and a
    LeaseNextSession whose release was done would find its lease gone."""
    fake = FailingStatus(
        lambda context: abort(
            context, grpc.StatusCode.UNAVAILABLE, "Garmin is down", reason="GARMIN_UNAVAILABLE"
        )
    )
    sleeps: list[float] = []
    with client_of(fake, sleeps) as client, pytest.raises(AuthServiceError) as raised:
        client.get_status("ann")
    assert (raised.value.code, raised.value.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "GARMIN_UNAVAILABLE",
    )
    assert not raised.value.fatal
    assert fake.calls == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    ],
)
def test_other_codes_are_not_retried(code: grpc.StatusCode) -> None:
    fake = FailingStatus(lambda context: abort(context, code, "no"))
    sleeps: list[float] = []
    with client_of(fake, sleeps) as client, pytest.raises(AuthServiceError) as raised:
        client.get_status("ann")
    assert raised.value.code == code
    assert fake.calls == 1
    assert sleeps == []


def test_error_info_reason_and_retry_info_delay_are_decoded() -> None:
    def rate_limited(context: grpc.ServicerContext) -> NoReturn:
        abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Garmin is rate limiting us",
            reason="GARMIN_RATE_LIMITED",
            retry_after=timedelta(seconds=2, milliseconds=500),
        )

    fake = FailingStatus(rate_limited)
    with client_of(fake, []) as client, pytest.raises(AuthServiceError) as raised:
        client.get_status("ann")
    error = raised.value
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "GARMIN_RATE_LIMITED")
    assert error.retry_after == 2.5
    assert error.message == "Garmin is rate limiting us"
    assert str(error) == "RESOURCE_EXHAUSTED GARMIN_RATE_LIMITED: Garmin is rate limiting us"
    assert not error.fatal


def test_a_lost_lease_and_a_refused_caller_are_told_apart() -> None:
    def lost(context: grpc.ServicerContext) -> NoReturn:
        abort(context, grpc.StatusCode.FAILED_PRECONDITION, "gone", reason="LEASE_LOST")

    def forbidden(context: grpc.ServicerContext) -> NoReturn:
        abort(context, grpc.StatusCode.PERMISSION_DENIED, "no", reason="CALLER_FORBIDDEN")

    errors = []
    for fail in (lost, forbidden):
        with (
            client_of(FailingStatus(fail), []) as client,
            pytest.raises(AuthServiceError) as raised,
        ):
            client.get_status("ann")
        errors.append(raised.value)
    assert errors[0].lease_lost
    assert not errors[0].fatal
    assert errors[1].credentials_refused
    assert errors[1].fatal


@dataclass(frozen=True)
class RawStatus(grpc.Status):
    """A status written by hand, to say what the rich-status helpers would refuse to."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, bytes], ...]


def test_a_status_whose_details_disagree_with_the_code_keeps_code_and_message() -> None:
    def contradictory(context: grpc.ServicerContext) -> NoReturn:
        detail = status_pb2.Status(code=code_pb2.INTERNAL, message="other")
        context.abort_with_status(
            RawStatus(
                grpc.StatusCode.NOT_FOUND,
                "no such user",
                (("grpc-status-details-bin", detail.SerializeToString()),),
            )
        )

    fake = FailingStatus(contradictory)
    with client_of(fake, []) as client, pytest.raises(AuthServiceError) as raised:
        client.get_status("ann")
    assert (raised.value.code, raised.value.reason) == (grpc.StatusCode.NOT_FOUND, "")
    assert raised.value.message == "no such user"


@pytest.mark.parametrize(
    "details",
    [
        b"\xff\xff\xff not a Status",  # a proxy's mangled trailer
        status_pb2.Status(  # a Status whose ErrorInfo is not one
            code=code_pb2.UNAVAILABLE,
            message="restarting",
            details=[
                any_pb2.Any(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff")
            ],
        ).SerializeToString(),
    ],
)
def test_garbled_status_details_keep_code_and_message(details: bytes) -> None:
    """Found by review: protobuf's DecodeError is no ValueError, and escaped untranslated,
    ending the sync thread (exit 1)."""

    def garbled(context: grpc.ServicerContext) -> NoReturn:
        context.abort_with_status(
            RawStatus(
                grpc.StatusCode.UNAVAILABLE,
                "restarting",
                (("grpc-status-details-bin", details),),
            )
        )

    fake = FailingStatus(garbled)
    with client_of(fake, []) as client, pytest.raises(AuthServiceError) as raised:
        client.get_status("ann")
    assert (raised.value.code, raised.value.reason) == (grpc.StatusCode.UNAVAILABLE, "")
    assert raised.value.message == "restarting"


@pytest.mark.parametrize("lease_next", [False, True])
@pytest.mark.parametrize("breaks", ["token", "domain", "expires_at"])
def test_a_malformed_grant_is_released_and_reported(lease_next: bool, breaks: str) -> None:
    broken = pb.AccessToken()
    broken.CopyFrom(ACCESS)
    broken.ClearField(breaks)
    fake = RecordingService(access=broken)
    with client_of(fake, []) as client:
        lease_it: Callable[[], object] = (
            (lambda: client.lease_next_session("w1", None, None))
            if lease_next
            else (lambda: client.lease_session("ann", "w1", None))
        )
        with pytest.raises(AuthServiceError) as raised:
            lease_it()
    assert (raised.value.code, raised.value.reason) == (grpc.StatusCode.INTERNAL, MALFORMED_GRANT)
    # The user is not left locked until the lease's ttl runs out.
    assert [seen.rpc for seen in fake.seen][1:] == ["ReleaseLease lease-1"]


@pytest.mark.parametrize(
    ("code", "reason", "released"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST", False),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", False),
        (grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED", False),
        (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "GARMIN_RATE_LIMITED", True),
        (grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE", True),
        (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_NOT_ACTIVE", True),
        (grpc.StatusCode.INTERNAL, MALFORMED_GRANT, True),
        (grpc.StatusCode.UNAVAILABLE, "", None),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", None),
        (grpc.StatusCode.INTERNAL, "INTERNAL", None),
    ],
)
def test_a_failed_lease_next_says_whether_its_release_was_done(
    code: grpc.StatusCode, reason: str, released: bool | None
) -> None:
    """The README's contract for LeaseNextSession with `release`, as the worker reads it:
    None sends the release again on its own."""
    assert release_outcome(AuthServiceError(code, reason, "x")) is released
