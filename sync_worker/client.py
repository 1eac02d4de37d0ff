"""A small typed client for garmin_auth.v1.GarminAuthService, as the sync worker uses it.

Every call goes through the generated stub's own method, carries the worker's bearer token and
a deadline, and returns our own values (``lease_grants``), never a protobuf message.
The service being unreachable (UNAVAILABLE without a reason: the network failed; or
DATABASE_UNAVAILABLE: it answers that before anything was committed) is retried a bounded
number of times with exponential backoff and full jitter; GARMIN_UNAVAILABLE is not (Garmin
failed, and a retry would call Garmin again). Every failure becomes an ``AuthServiceError``
(``client_errors``).

Secrets: the bearer token lives only in the call metadata; a lease's Garmin access token is
handed out as ``AccessToken``, whose repr is redacted. The worker never gets (or sends) more
of a session than that.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_client.session_proto import MalformedSession
from sync_worker.client_errors import (
    CALL_NOT_SENT,
    MALFORMED_GRANT,
    AuthServiceError,
    error_from_rpc,
)
from sync_worker.lease_grants import (
    AccessToken,
    LeasedSession,
    SessionStatus,
    read_access,
    read_datetime,
    read_grant,
    read_status,
)

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
_Rpc = grpc.UnaryUnaryMultiCallable


class _WorkerStub(Protocol):
    """The worker's methods of the generated stub, typed (protoc writes no hints for them)."""

    LeaseSession: _Rpc[pb.LeaseSessionRequest, pb.LeaseSessionResponse]
    LeaseNextSession: _Rpc[pb.LeaseNextSessionRequest, pb.LeaseNextSessionResponse]
    RenewLease: _Rpc[pb.RenewLeaseRequest, pb.RenewLeaseResponse]
    ReleaseLease: _Rpc[pb.ReleaseLeaseRequest, pb.ReleaseLeaseResponse]
    RefreshLease: _Rpc[pb.RefreshLeaseRequest, pb.RefreshLeaseResponse]
    ReportInvalidated: _Rpc[pb.ReportInvalidatedRequest, pb.ReportInvalidatedResponse]
    GetStatus: _Rpc[pb.GetStatusRequest, pb.GetStatusResponse]


@dataclass(frozen=True, repr=False)
class Release:
    """A lease to end, as a ReleaseLease (or a LeaseNextSession carrying it) says it."""

    lease_id: str
    # Set after a complete, durable read: how far the sync got.
    synced_through: datetime | None
    # Set when the sync stopped at the Connect API's 429: the seconds Garmin asked for.
    garmin_retry_after: float | None = None

    def __repr__(self) -> str:
        return "Release(...)"  # the lease id is the holder's key


def _release_request(
    lease_id: str, synced_through: datetime | None, garmin_retry_after: float | None
) -> pb.ReleaseLeaseRequest:
    return pb.ReleaseLeaseRequest(
        lease_id=lease_id,
        synced_through=synced_through,
        garmin_retry_after=None
        if garmin_retry_after is None
        else timedelta(seconds=garmin_retry_after),
    )


@dataclass(frozen=True, repr=False)
class AuthClientConfig:
    """How to reach the auth service. TLS is used when ``tls_ca_file`` is set."""

    target: str
    token: str
    timeout_seconds: float = 30.0
    # Attempts for a call answered UNAVAILABLE: the first plus retries (with the backoff
    # below, 6 s in all, +-20%: a replica's restart, not an outage).
    attempts: int = 6
    backoff_initial_seconds: float = 0.2
    backoff_max_seconds: float = 3.0
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_server_name: str | None = None

    def __repr__(self) -> str:
        # The bearer token is a secret: never in a repr, a log line or an error.
        return f"AuthClientConfig(target={self.target!r}, tls={self.tls_ca_file is not None})"


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
        self._stub: _WorkerStub = pb_grpc.GarminAuthServiceStub(self._channel)
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
        request = pb.LeaseSessionRequest(user_id=user_id, holder=holder, ttl=ttl)
        response = self._call(
            self._stub.LeaseSession, request, "LeaseSession", may_wait_for_garmin=True
        )
        return self._grant(response.lease, response.access, response.status)

    def lease_next_session(
        self,
        holder: str,
        ttl: timedelta | None,
        min_sync_interval: timedelta | None,
        release: Release | None = None,
    ) -> LeasedSession | None:
        """The most overdue session, or None when nothing is due. With `release` (a lease id,
        its synced_through and Garmin's 429, if one ended the sync), that lease is released
        first, in the same call: LEASE_LOST
        then means only that the release was refused (and nothing was granted); any other
        error the service answers comes after the release was done (INVALID_ARGUMENT and a
        refused caller: before anything was; DATABASE_UNAVAILABLE, retried here: normally
        before, since the release and the first grant are one write)."""
        request = pb.LeaseNextSessionRequest(
            holder=holder, ttl=ttl, min_sync_interval=min_sync_interval
        )
        if release is not None:
            request.release.CopyFrom(
                _release_request(
                    release.lease_id, release.synced_through, release.garmin_retry_after
                )
            )
        response = self._call(
            self._stub.LeaseNextSession, request, "LeaseNextSession", may_wait_for_garmin=True
        )
        if not response.HasField("lease"):
            return None
        return self._grant(response.lease, response.access, response.status)

    def renew_lease(self, lease_id: str, ttl: timedelta | None) -> datetime:
        """Extend the lease; returns its new expiry."""
        request = pb.RenewLeaseRequest(lease_id=lease_id, ttl=ttl)
        response = self._call(self._stub.RenewLease, request, "RenewLease")
        return read_datetime(response.lease.expires_at)

    def release_lease(
        self,
        lease_id: str,
        synced_through: datetime | None,
        garmin_retry_after: float | None = None,
    ) -> SessionStatus:
        """End the lease (`garmin_retry_after`: the sync stopped at the Connect API's 429,
        which asked for that many seconds)."""
        request = _release_request(lease_id, synced_through, garmin_retry_after)
        response = self._call(self._stub.ReleaseLease, request, "ReleaseLease")
        return read_status(response.status)

    def refresh_lease(self, lease_id: str, session_version: int) -> AccessToken:
        """A fresh access token: the holder's token of `session_version` was refused."""
        request = pb.RefreshLeaseRequest(lease_id=lease_id, session_version=session_version)
        response = self._call(
            self._stub.RefreshLease, request, "RefreshLease", may_wait_for_garmin=True
        )
        try:
            return read_access(response.access, response.status.session_version)
        except MalformedSession as exc:
            raise AuthServiceError(
                grpc.StatusCode.INTERNAL, MALFORMED_GRANT, f"RefreshLease answered an {exc}"
            ) from None

    def report_invalidated(
        self, lease_id: str, reason: str, session_version: int = 0
    ) -> SessionStatus:
        """Garmin refused a fresh access token of `session_version` (0: unknown)."""
        request = pb.ReportInvalidatedRequest(
            lease_id=lease_id, reason=reason[:512], session_version=session_version
        )
        response = self._call(self._stub.ReportInvalidated, request, "ReportInvalidated")
        return read_status(response.status)

    def get_status(self, user_id: str) -> SessionStatus:
        request = pb.GetStatusRequest(user_id=user_id)
        response = self._call(self._stub.GetStatus, request, "GetStatus")
        return read_status(response.status)

    # --- plumbing ------------------------------------------------------------------------

    def _grant(
        self, lease: pb.Lease, access: pb.AccessToken, status: pb.SessionStatus
    ) -> LeasedSession:
        try:
            return read_grant(lease, access, status)
        except MalformedSession as exc:
            # Never happens with a sound service; do not leave the user locked until the ttl.
            log.warning("lease for user %s: the granted %s", lease.user_id, exc)
            self._release_quietly(lease.lease_id)
            raise AuthServiceError(
                grpc.StatusCode.INTERNAL,
                MALFORMED_GRANT,
                "the service handed out an access token the worker cannot read",
            ) from None

    def _release_quietly(self, lease_id: str) -> None:
        try:
            self.release_lease(lease_id, None)
        except AuthServiceError as exc:
            log.warning("could not release an unusable lease: %s", exc)

    def _call(
        self,
        method: _Rpc[RequestT, ResponseT],
        request: RequestT,
        rpc: str,
        *,
        may_wait_for_garmin: bool = False,
    ) -> ResponseT:
        """One RPC with a deadline on every attempt; the service being unreachable
        (UNAVAILABLE without a reason, or DATABASE_UNAVAILABLE) retried up to the bound.
        `may_wait_for_garmin`: the service may spend the call waiting for Garmin, so its
        deadline passing says Garmin is slow, not that the service is gone."""
        config = self._config
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, metadata=self._metadata, timeout=config.timeout_seconds)
            except grpc.RpcError as raw:
                error = error_from_rpc(raw)
            except (ValueError, TypeError) as exc:
                # gRPC refused to send the call (metadata it cannot encode, such as a token
                # holding a lone surrogate: UnicodeEncodeError). The config refuses such a
                # token; any other stays an AuthServiceError, never a dead sync thread. The
                # exception's text may quote the token: only its type is kept.
                raise AuthServiceError(
                    grpc.StatusCode.INTERNAL,
                    CALL_NOT_SENT,
                    f"gRPC did not send the {rpc} call ({type(exc).__name__})",
                ) from None
            if may_wait_for_garmin and error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                error.waited_for_garmin = True
            if not error.retryable or attempt >= config.attempts:
                raise error
            # Jitter of +-20% keeps workers that met the same restart out of lockstep, yet
            # keeps the whole wait near the sum of the steps: full jitter (0 to the step)
            # halved it on average, so a restart of 3 s ended most runs (exit 3).
            step = min(
                config.backoff_max_seconds, config.backoff_initial_seconds * 2 ** (attempt - 1)
            )
            delay = step * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not a secret)
            log.info("%s answered UNAVAILABLE; retry %d in %.2fs", rpc, attempt, delay)
            self._sleep(delay)


# After a refused connection gRPC waits about 1 s (+-20%) before it connects again, and a call
# made meanwhile fails at once without touching the network: our retries would all fall in
# that window and a replica's restart of a few hundred milliseconds would end the run (exit
# 3). Reconnect as soon as a retry asks.
_RECONNECT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def _channel(config: AuthClientConfig) -> grpc.Channel:
    if config.tls_ca_file is None:
        if config.tls_cert_file is not None or config.tls_key_file is not None:
            raise ValueError("a TLS client certificate needs a CA file too")
        # Never through a proxy the environment names (http_proxy, grpc_proxy): gRPC routes
        # even a loopback target through it, and the bearer token would cross the network in
        # clear, to the proxy's host (plaintext is allowed for this machine only).
        return grpc.insecure_channel(
            config.target, options=[*_RECONNECT_OPTIONS, ("grpc.enable_http_proxy", 0)]
        )
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        raise ValueError("a TLS client certificate and its key go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=config.tls_ca_file.read_bytes(),
        private_key=config.tls_key_file.read_bytes() if config.tls_key_file else None,
        certificate_chain=config.tls_cert_file.read_bytes() if config.tls_cert_file else None,
    )
    options = list(_RECONNECT_OPTIONS)
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return grpc.secure_channel(config.target, credentials, options=options)
