"""How errors answer over gRPC: a status code, a google.rpc.ErrorInfo reason and details.

Each domain error class names its own answer (`code_name`, `reason`); this module only turns
those names into gRPC values, so the mapping is written once. Driver errors that mean "the
database did not answer" answer DATABASE_UNAVAILABLE. Every answer carries an ErrorInfo with
domain "garmin-auth.v1"; INVALID_ARGUMENT adds a BadRequest with field violations, rate limits
add a RetryInfo. Anything else is a bug and answers INTERNAL with a generic message (details go
to the log, never to the caller).
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class ErrorRow:
    """How one error answers."""

    code: grpc.StatusCode
    reason: str


INTERNAL_ROW = ErrorRow(grpc.StatusCode.INTERNAL, "INTERNAL")
DATABASE_UNAVAILABLE_ROW = ErrorRow(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
# When Garmin says "slow down" without saying how long, callers wait this long.
DEFAULT_GARMIN_RETRY_SECONDS = 60.0


def domain_error_classes() -> list[type[errors.DomainError]]:
    """DomainError and every subclass defined so far, bases before their subclasses."""
    found: list[type[errors.DomainError]] = []
    pending: list[type[errors.DomainError]] = [errors.DomainError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def row_of(cls: type[errors.DomainError]) -> ErrorRow:
    """The answer the class names (KeyError if its code_name is not a gRPC status code)."""
    return ErrorRow(grpc.StatusCode[cls.code_name], cls.reason)


def documented_rows() -> set[ErrorRow]:
    """Every answer the service gives on purpose (the README's error table)."""
    domain_rows = {row_of(cls) for cls in domain_error_classes()}
    return (domain_rows - {INTERNAL_ROW}) | {DATABASE_UNAVAILABLE_ROW}


def row_for(exc: BaseException) -> ErrorRow:
    """The answer to an exception (INTERNAL for anything unexpected)."""
    if isinstance(exc, errors.DomainError):
        return row_of(type(exc))
    if isinstance(exc, OperationalError | PoolTimeoutError):
        return DATABASE_UNAVAILABLE_ROW
    if isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) in _UNAVAILABLE_STATES
    ):
        return DATABASE_UNAVAILABLE_ROW
    return INTERNAL_ROW


# What PostgreSQL answers, outside its "operational" classes, when the database cannot take
# the call now rather than when the call is wrong: a node that refuses writes (a hot standby a
# failover left the pool on, default_transaction_read_only for maintenance), and a session
# ended for a transaction left idle (storage.database: a replica frozen mid-transaction).
_UNAVAILABLE_STATES = frozenset({"25006", "25P03"})


def _message(exc: BaseException, row: ErrorRow) -> str:
    if isinstance(exc, errors.DomainError):
        return exc.message
    if row == DATABASE_UNAVAILABLE_ROW:
        return "the database is unavailable; retry later"
    return "internal error"


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(
        exc,
        errors.LoginRateLimited
        | errors.GarminRateLimited
        | errors.TooManyStreams
        | errors.ValidateRateLimited
        | errors.TooManyWatchers,
    ):
        return exc.retry_after_seconds or DEFAULT_GARMIN_RETRY_SECONDS
    return None


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(exc: BaseException) -> grpc.Status:
    """The gRPC status (with ErrorInfo and other details) answering `exc`."""
    row = row_for(exc)
    info = error_details_pb2.ErrorInfo(reason=row.reason, domain=ERROR_DOMAIN)
    if (
        (isinstance(exc, errors.CallerForbidden) and exc.about_user)
        or (isinstance(exc, errors.GarminRefusalInDoubt))
        or (isinstance(exc, errors.GarminRateLimited) and exc.only_this_account)
    ):
        # About the user named (out of the caller's scope; Garmin's doubtful 401 to its
        # garth session; its account waits out Garmin's 429): the caller itself may go on
        # with others, and a worker does not count it as an outage (README, Errors).
        info.metadata["scope"] = "user"
    details = [_pack(info)]
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
