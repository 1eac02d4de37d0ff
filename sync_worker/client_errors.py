"""What a failed call on the auth service means to the worker: ``AuthServiceError``.

The service answers every failure with a rich status (google.rpc.Status) carrying an ErrorInfo
reason and, when waiting helps, a RetryInfo delay; callers branch on those, never on message
text. Messages are the service's, which never carry a secret, or our own.
"""

from __future__ import annotations

from typing import Final, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# ErrorInfo reasons the worker acts on (the README's error table has them all).
LEASE_LOST: Final = "LEASE_LOST"
LEASE_HELD: Final = "LEASE_HELD"
SESSION_NOT_FOUND: Final = "SESSION_NOT_FOUND"
SESSION_NOT_ACTIVE: Final = "SESSION_NOT_ACTIVE"
GARMIN_RATE_LIMITED: Final = "GARMIN_RATE_LIMITED"
GARMIN_UNAVAILABLE: Final = "GARMIN_UNAVAILABLE"
DATABASE_UNAVAILABLE: Final = "DATABASE_UNAVAILABLE"
CALLER_REASONS: Final = frozenset({"CALLER_UNAUTHENTICATED", "CALLER_FORBIDDEN"})
# Our own reason for a grant whose tokens cannot be read (a service bug, not the user's).
MALFORMED_GRANT: Final = "MALFORMED_GRANT"
# Our own reason for a call gRPC refused to send (the stub raised before any RPC).
CALL_NOT_SENT: Final = "CALL_NOT_SENT"


class AuthServiceError(Exception):
    """A call failed: the gRPC code, ErrorInfo reason, message and RetryInfo delay."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        retry_after: float | None = None,
        *,
        about_user: bool = False,
        waited_for_garmin: bool = False,
    ) -> None:
        super().__init__(f"{code.name}{f' {reason}' if reason else ''}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        # A refusal about the user named (ErrorInfo metadata scope=user: CALLER_FORBIDDEN for
        # a user outside the caller's user_id_prefix, GARMIN_RATE_LIMITED for an account
        # waiting out its own cooldown, GARMIN_UNAVAILABLE for Garmin's doubtful 401 to the
        # user's garth session): the worker goes on with the others.
        self.about_user = about_user
        # The deadline passed on a call the service may spend waiting for Garmin (a grant's or
        # RefreshLease's refresh, or another replica's): Garmin slow, not the service gone.
        self.waited_for_garmin = waited_for_garmin

    @property
    def lease_lost(self) -> bool:
        return self.reason == LEASE_LOST

    @property
    def credentials_refused(self) -> bool:
        """The service does not accept the worker's token (or its role)."""
        if self.about_user:
            return False
        return self.code == grpc.StatusCode.UNAUTHENTICATED or self.reason in CALLER_REASONS

    @property
    def unreachable(self) -> bool:
        """The service itself cannot serve us (network, overload, its database), as opposed
        to an answer about one user (GARMIN_UNAVAILABLE is Garmin failing, not the service)."""
        if self.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return not self.waited_for_garmin
        return self.code == grpc.StatusCode.UNAVAILABLE and self.reason != GARMIN_UNAVAILABLE

    @property
    def garmin_unavailable(self) -> bool:
        """Garmin failed the service's call for this user (GARMIN_UNAVAILABLE), or kept the
        service past the deadline: counted with the run's other Garmin outages. Not Garmin's
        answer about this one session (GARMIN_UNAVAILABLE with scope=user: a dead garth
        session the service keeps for its grace), which is no outage: a few of those in a
        row must not stop the run."""
        if self.reason == GARMIN_UNAVAILABLE:
            return not self.about_user
        return self.waited_for_garmin

    @property
    def retryable(self) -> bool:
        """Worth sending again at once: the call did not get through to the service (no
        reason: the connection failed), or its database did not answer, in which case it
        did nothing (the README's error table). Never GARMIN_UNAVAILABLE: the service has
        already asked Garmin and Garmin failed; asking again would ask Garmin again (a
        refresh is never repeated), and a LeaseNextSession whose release was done would
        find its lease gone."""
        return self.code == grpc.StatusCode.UNAVAILABLE and self.reason in (
            "",
            DATABASE_UNAVAILABLE,
        )

    @property
    def fatal(self) -> bool:
        """Nothing more can be done in this run: exit 3."""
        return self.unreachable or self.credentials_refused


def error_from_rpc(error: grpc.RpcError) -> AuthServiceError:
    """Decode a failed call: its code, message and rich status (ErrorInfo, RetryInfo)."""
    code, message = error.code(), error.details() or ""
    reason, retry_after, about_user = "", None, False
    try:
        # grpc raises each failed unary call as an RpcError that is also its grpc.Call.
        status = rpc_status.from_call(cast(grpc.Call, error))
        for packed in status.details if status is not None else ():
            if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                packed.Unpack(info)
                reason = str(info.reason)
                about_user = info.metadata.get("scope") == "user"
            elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                packed.Unpack(retry)
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    except (ValueError, DecodeError):
        # A status whose details disagree with the call's code, or that do not parse (a
        # proxy's mangled trailer): keep the call's code and message, and nothing of them.
        reason, retry_after, about_user = "", None, False
    return AuthServiceError(code, reason, message, retry_after, about_user=about_user)
