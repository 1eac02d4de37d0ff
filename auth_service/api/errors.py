"""The one table from domain errors to gRPC status codes and google.rpc.ErrorInfo reasons.

Every error answer carries an ErrorInfo with domain "garmin-auth.v1"; INVALID_ARGUMENT adds a
BadRequest with field violations, rate limits add a RetryInfo. Anything not in the table is a
bug and answers INTERNAL with a generic message (details go to the log, never to the caller).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from auth_service.domain import errors

ERROR_DOMAIN = "garmin-auth.v1"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorRow:
    """How one domain error answers."""

    code: grpc.StatusCode
    reason: str


class DatabaseUnavailable(Exception):
    """The database did not answer (stand-in for driver errors in the table)."""


# Ordered: the first row whose class matches wins (subclasses before their bases).
ERROR_TABLE: dict[type[BaseException], ErrorRow] = {
    errors.InvalidArgument: ErrorRow(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    errors.CallerUnauthenticated: ErrorRow(
        grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED"
    ),
    errors.CallerForbidden: ErrorRow(grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN"),
    errors.GarminCredentialsRejected: ErrorRow(
        grpc.StatusCode.PERMISSION_DENIED, "GARMIN_CREDENTIALS_REJECTED"
    ),
    errors.MfaCodeRejected: ErrorRow(grpc.StatusCode.PERMISSION_DENIED, "MFA_CODE_REJECTED"),
    errors.SessionNotFound: ErrorRow(grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND"),
    errors.MfaChallengeNotFound: ErrorRow(grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND"),
    errors.MfaChallengeBusy: ErrorRow(grpc.StatusCode.ABORTED, "MFA_CHALLENGE_BUSY"),
    errors.SessionNotActive: ErrorRow(grpc.StatusCode.FAILED_PRECONDITION, "SESSION_NOT_ACTIVE"),
    errors.GarminSessionRejected: ErrorRow(
        grpc.StatusCode.FAILED_PRECONDITION, "SESSION_NOT_ACTIVE"
    ),
    errors.LeaseLost: ErrorRow(grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST"),
    errors.LeaseHeld: ErrorRow(grpc.StatusCode.ABORTED, "LEASE_HELD"),
    errors.LoginRateLimited: ErrorRow(grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_RATE_LIMITED"),
    errors.GarminRateLimited: ErrorRow(grpc.StatusCode.RESOURCE_EXHAUSTED, "GARMIN_RATE_LIMITED"),
    errors.GarminUnavailable: ErrorRow(grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE"),
    DatabaseUnavailable: ErrorRow(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    OperationalError: ErrorRow(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    PoolTimeoutError: ErrorRow(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
}

INTERNAL_ROW = ErrorRow(grpc.StatusCode.INTERNAL, "INTERNAL")
# When Garmin says "slow down" without saying how long, callers wait this long.
DEFAULT_GARMIN_RETRY_SECONDS = 60.0


def row_for(exc: BaseException) -> ErrorRow:
    """The table row of an exception (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        row = ERROR_TABLE.get(cls)
        if row is not None:
            return row
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return ERROR_TABLE[DatabaseUnavailable]
    return INTERNAL_ROW


def _message(exc: BaseException, row: ErrorRow) -> str:
    if isinstance(exc, errors.DomainError):
        return exc.message
    if row.reason == "DATABASE_UNAVAILABLE":
        return "the database is unavailable; retry later"
    return "internal error"


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, errors.LoginRateLimited | errors.GarminRateLimited):
        return exc.retry_after_seconds or DEFAULT_GARMIN_RETRY_SECONDS
    return None


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(exc: BaseException) -> grpc.Status:
    """The gRPC status (with ErrorInfo and other details) answering `exc`."""
    row = row_for(exc)
    details = [_pack(error_details_pb2.ErrorInfo(reason=row.reason, domain=ERROR_DOMAIN))]
    if isinstance(exc, errors.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in exc.violations
                    ]
                )
            )
        )
    retry_after = _retry_after(exc)
    if retry_after is not None:
        seconds = max(1, math.ceil(retry_after))
        details.append(
            _pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
        )
    status = status_pb2.Status(
        code=getattr(code_pb2, row.code.name),
        message=_message(exc, row),
        details=details,
    )
    return rpc_status.to_status(status)
