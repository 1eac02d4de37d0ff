"""A small typed client for garmin_auth.v1.GarminAuthService, as the sync worker uses it.

Every call carries the worker's bearer token and a deadline. UNAVAILABLE (and only that: the
service answers it before anything was committed, or the network failed) is retried a bounded
number of times with exponential backoff and full jitter. Every other failure becomes an
``AuthServiceError`` holding the status code, the google.rpc.ErrorInfo reason and the
RetryInfo delay the service put in its rich status, so callers branch on reasons rather than
on message text.

Secrets: the bearer token lives only in the call metadata; leased Garmin tokens are handed
out as ``GarminTokens``, whose repr is redacted. Error messages are the service's, which never
carry a secret, or our own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from auth_service.api.convert import tokens_from_proto
from auth_service.domain.errors import InvalidArgument
from auth_service.domain.models import GarminTokens
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_client.session_proto import tokens_to_proto

log = logging.getLogger(__name__)

# ErrorInfo reasons the worker acts on (the README's error table has them all).
LEASE_LOST: Final = "LEASE_LOST"
LEASE_HELD: Final = "LEASE_HELD"
SESSION_NOT_FOUND: Final = "SESSION_NOT_FOUND"
SESSION_NOT_ACTIVE: Final = "SESSION_NOT_ACTIVE"
GARMIN_RATE_LIMITED: Final = "GARMIN_RATE_LIMITED"
GARMIN_UNAVAILABLE: Final = "GARMIN_UNAVAILABLE"
CALLER_REASONS: Final = frozenset({"CALLER_UNAUTHENTICATED", "CALLER_FORBIDDEN"})
# Our own reason for a grant whose tokens cannot be read (a service bug, not the user's).
MALFORMED_GRANT: Final = "MALFORMED_GRANT"


@dataclass(frozen=True, repr=False)
class AuthClientConfig:
    """How to reach the auth service. TLS is used when ``tls_ca_file`` is set."""

    target: str
    token: str
    timeout_seconds: float = 30.0
    # Attempts for a call answered UNAVAILABLE: the first plus retries.
    attempts: int = 4
    backoff_initial_seconds: float = 0.2
    backoff_max_seconds: float = 3.0
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_server_name: str | None = None

    def __repr__(self) -> str:
        # The bearer token is a secret: never in a repr, a log line or an error.
        return f"AuthClientConfig(target={self.target!r}, tls={self.tls_ca_file is not None})"


class AuthServiceError(Exception):
    """A call failed: the gRPC code, ErrorInfo reason, message and RetryInfo delay."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}{f' {reason}' if reason else ''}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def lease_lost(self) -> bool:
        return self.reason == LEASE_LOST

    @property
    def credentials_refused(self) -> bool:
        """The service does not accept the worker's token (or its role)."""
        return self.code == grpc.StatusCode.UNAUTHENTICATED or self.reason in CALLER_REASONS

    @property
    def unreachable(self) -> bool:
        """The service itself cannot serve us (network, overload, its database), as opposed
        to an answer about one user (GARMIN_UNAVAILABLE is Garmin failing, not the service)."""
        if self.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return True
        return self.code == grpc.StatusCode.UNAVAILABLE and self.reason != GARMIN_UNAVAILABLE

    @property
    def fatal(self) -> bool:
        """Nothing more can be done in this run: exit 3."""
        return self.unreachable or self.credentials_refused


@dataclass(frozen=True, repr=False)
class LeasedSession:
    """A granted lease with the tokens to use under it."""

    lease_id: str
    user_id: str
    holder: str
    fencing_token: int
    expires_at: datetime
    # How far earlier syncs got; None when never synced.
    synced_through: datetime | None
    tokens: GarminTokens
    status: pb.SessionStatus

    def __repr__(self) -> str:
        return f"LeasedSession(user_id={self.user_id!r}, fencing_token={self.fencing_token})"


def _error_of(error: grpc.RpcError) -> AuthServiceError:
    """Decode the rich status (ErrorInfo, RetryInfo) of a failed call."""
    # The errors grpc raises for unary calls are also grpc.Call objects; the stubs do not say.
    code_of, details_of = getattr(error, "code", None), getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    message = (details_of() if callable(details_of) else None) or ""
    reason, retry_after = "", None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        # A status whose details disagree with the call's code: keep code and message.
        status = None
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason = str(info.reason)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return AuthServiceError(code, reason, message, retry_after)


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def _duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def _datetime(message: timestamp_pb2.Timestamp) -> datetime:
    return message.ToDatetime(tzinfo=UTC)


class AuthClient:
    """Typed calls on GarminAuthService with the worker role. Thread-safe (one channel)."""

    def __init__(
        self,
        config: AuthClientConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self._sleep = sleep
        self._channel = _channel(config)
        self._stub = pb_grpc.GarminAuthServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {config.token}"),)
        self._closed = threading.Event()

    def __enter__(self) -> AuthClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._channel.close()

    # --- the worker's RPCs ---------------------------------------------------------------

    def lease_session(self, user_id: str, holder: str, ttl: timedelta | None) -> LeasedSession:
        request = pb.LeaseSessionRequest(user_id=user_id, holder=holder, ttl=_duration(ttl))
        response: pb.LeaseSessionResponse = self._call("LeaseSession", request)
        return self._grant(response.lease, response.session, response.status)

    def lease_next_session(
        self, holder: str, ttl: timedelta | None, min_sync_interval: timedelta | None
    ) -> LeasedSession | None:
        """The most overdue session, or None when nothing is due."""
        request = pb.LeaseNextSessionRequest(
            holder=holder, ttl=_duration(ttl), min_sync_interval=_duration(min_sync_interval)
        )
        response: pb.LeaseNextSessionResponse = self._call("LeaseNextSession", request)
        if not response.HasField("lease"):
            return None
        return self._grant(response.lease, response.session, response.status)

    def renew_lease(self, lease_id: str, ttl: timedelta | None) -> datetime:
        """Extend the lease; returns its new expiry."""
        request = pb.RenewLeaseRequest(lease_id=lease_id, ttl=_duration(ttl))
        response: pb.RenewLeaseResponse = self._call("RenewLease", request)
        return _datetime(response.lease.expires_at)

    def release_lease(self, lease_id: str, synced_through: datetime | None) -> pb.SessionStatus:
        request = pb.ReleaseLeaseRequest(
            lease_id=lease_id,
            synced_through=None if synced_through is None else _timestamp(synced_through),
        )
        response: pb.ReleaseLeaseResponse = self._call("ReleaseLease", request)
        return response.status

    def report_refreshed(self, lease_id: str, tokens: GarminTokens) -> pb.SessionStatus:
        request = pb.ReportRefreshedRequest(lease_id=lease_id, session=tokens_to_proto(tokens))
        response: pb.ReportRefreshedResponse = self._call("ReportRefreshed", request)
        return response.status

    def report_invalidated(self, lease_id: str, reason: str) -> pb.SessionStatus:
        request = pb.ReportInvalidatedRequest(lease_id=lease_id, reason=reason[:512])
        response: pb.ReportInvalidatedResponse = self._call("ReportInvalidated", request)
        return response.status

    def get_status(self, user_id: str) -> pb.SessionStatus:
        response: pb.GetStatusResponse = self._call(
            "GetStatus", pb.GetStatusRequest(user_id=user_id)
        )
        return response.status

    # --- plumbing ------------------------------------------------------------------------

    def _grant(
        self, lease: pb.Lease, session: pb.GarminSession, status: pb.SessionStatus
    ) -> LeasedSession:
        try:
            tokens = tokens_from_proto(session, "session")
        except InvalidArgument:
            # Never happens with a sound service; do not leave the user locked until the ttl.
            self._release_quietly(lease.lease_id)
            raise AuthServiceError(
                grpc.StatusCode.INTERNAL,
                MALFORMED_GRANT,
                "the service handed out a session the worker cannot read",
            ) from None
        return LeasedSession(
            lease_id=lease.lease_id,
            user_id=lease.user_id,
            holder=lease.holder,
            fencing_token=lease.fencing_token,
            expires_at=_datetime(lease.expires_at),
            synced_through=(
                _datetime(status.synced_through) if status.HasField("synced_through") else None
            ),
            tokens=tokens,
            status=status,
        )

    def _release_quietly(self, lease_id: str) -> None:
        try:
            self.release_lease(lease_id, None)
        except AuthServiceError as exc:
            log.warning("could not release an unusable lease: %s", exc)

    def _call(self, rpc: str, request: Any) -> Any:
        method = getattr(self._stub, rpc)
        config = self._config
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, metadata=self._metadata, timeout=config.timeout_seconds)
            except grpc.RpcError as raw:
                error = _error_of(raw)
            if error.code != grpc.StatusCode.UNAVAILABLE or attempt >= config.attempts:
                raise error
            # Full jitter: replicas restarting together must not be hit in lockstep.
            ceiling = min(
                config.backoff_max_seconds, config.backoff_initial_seconds * 2 ** (attempt - 1)
            )
            delay = random.uniform(0, ceiling)  # noqa: S311 (jitter, not a secret)
            log.info("%s answered UNAVAILABLE; retry %d in %.2fs", rpc, attempt, delay)
            self._sleep(delay)


def _channel(config: AuthClientConfig) -> grpc.Channel:
    if config.tls_ca_file is None:
        if config.tls_cert_file is not None or config.tls_key_file is not None:
            raise ValueError("a TLS client certificate needs a CA file too")
        return grpc.insecure_channel(config.target)
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        raise ValueError("a TLS client certificate and its key go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=config.tls_ca_file.read_bytes(),
        private_key=config.tls_key_file.read_bytes() if config.tls_key_file else None,
        certificate_chain=config.tls_cert_file.read_bytes() if config.tls_cert_file else None,
    )
    options: list[tuple[str, Any]] = []
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return grpc.secure_channel(config.target, credentials, options=options)
