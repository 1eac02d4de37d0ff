"""Every row of the domain-error table answers its documented code, reason and details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from auth_service.api.errors import ERROR_DOMAIN, ERROR_TABLE, DatabaseUnavailable, to_status
from auth_service.domain import errors

# One representative instance per table row, with the answer the README documents.
CASES: list[tuple[BaseException, grpc.StatusCode, str]] = [
    (
        errors.InvalidArgument([errors.FieldViolation("user_id", "is required")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    ),
    (errors.CallerUnauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED"),
    (errors.CallerForbidden("x"), grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN"),
    (
        errors.GarminCredentialsRejected("x"),
        grpc.StatusCode.PERMISSION_DENIED,
        "GARMIN_CREDENTIALS_REJECTED",
    ),
    (errors.MfaCodeRejected("x"), grpc.StatusCode.PERMISSION_DENIED, "MFA_CODE_REJECTED"),
    (errors.SessionNotFound("x"), grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND"),
    (errors.MfaChallengeNotFound("x"), grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND"),
    (errors.MfaChallengeBusy("x"), grpc.StatusCode.ABORTED, "MFA_CHALLENGE_BUSY"),
    (errors.SessionNotActive("x"), grpc.StatusCode.FAILED_PRECONDITION, "SESSION_NOT_ACTIVE"),
    (
        errors.GarminSessionRejected("x"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_ACTIVE",
    ),
    (errors.LeaseLost("x"), grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST"),
    (errors.LeaseHeld("x"), grpc.StatusCode.ABORTED, "LEASE_HELD"),
    (
        errors.LoginRateLimited("x", retry_after_seconds=12.2),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LOGIN_RATE_LIMITED",
    ),
    (
        errors.GarminRateLimited("x", retry_after_seconds=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "GARMIN_RATE_LIMITED",
    ),
    (errors.GarminUnavailable("x"), grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE"),
    (DatabaseUnavailable(), grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    (
        OperationalError("SELECT 1", {}, Exception("connection refused")),
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
    ),
    (PoolTimeoutError("pool exhausted"), grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
]


def _details(status: grpc.Status) -> list[object]:
    trailing = dict(status.trailing_metadata)
    rich = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    found: list[object] = []
    for packed in rich.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if packed.Is(cls.DESCRIPTOR):
                message = cls()
                packed.Unpack(message)
                found.append(message)
    return found


def test_every_table_row_has_a_case() -> None:
    covered = {type(exc) for exc, _, _ in CASES}
    assert set(ERROR_TABLE) == covered


@pytest.mark.parametrize(
    ("exc", "code", "reason"), CASES, ids=[type(case[0]).__name__ for case in CASES]
)
def test_row_answers_code_reason_and_details(
    exc: BaseException, code: grpc.StatusCode, reason: str
) -> None:
    status = to_status(exc)
    assert status.code == code
    details = _details(status)
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1
    assert infos[0].reason == reason
    assert infos[0].domain == ERROR_DOMAIN
    retry = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert len(retry) == 1
        assert retry[0].retry_delay.seconds >= 1
    else:
        assert retry == []
    bad_request = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert [v.field for v in bad_request[0].field_violations] == ["user_id"]
    else:
        assert bad_request == []


def test_unexpected_exception_is_internal_without_details_leaking() -> None:
    status = to_status(RuntimeError("secret-token-abc123 exploded"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert "secret" not in status.details


def test_database_errors_never_leak_the_driver_message() -> None:
    status = to_status(
        OperationalError("SELECT", {}, Exception("password authentication failed for hunter2"))
    )
    assert "hunter2" not in status.details
