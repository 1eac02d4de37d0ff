"""What a caller gets for every error class, and the README's error table says the same."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from auth_service.api.errors import (
    DEFAULT_GARMIN_RETRY_SECONDS,
    ERROR_DOMAIN,
    documented_rows,
    domain_error_classes,
    row_for,
    to_status,
)
from auth_service.domain import errors

Detail = TypeVar("Detail")
README = Path(__file__).resolve().parents[2] / "README.md"
CLASSES = domain_error_classes()
# Classes whose constructor takes more than a message.
MAKERS: dict[type[errors.DomainError], Callable[[], errors.DomainError]] = {
    errors.InvalidArgument: lambda: errors.InvalidArgument(
        [errors.FieldViolation("user_id", "is required")]
    ),
    errors.RefreshTokenImportedElsewhere: lambda: errors.RefreshTokenImportedElsewhere(
        "garminconnect_tokens"
    ),
    errors.LoginRateLimited: lambda: errors.LoginRateLimited("slow down", 12.2),
    errors.ValidateRateLimited: lambda: errors.ValidateRateLimited("not yet", 41.5),
}
# The two classes no code raises on purpose: they only group the others.
BASES = {errors.DomainError, errors.UpstreamError}
RAISED = [cls for cls in CLASSES if cls not in BASES]
DATABASE_ERRORS: list[BaseException] = [
    OperationalError("SELECT 1", {}, Exception("connection refused")),
    PoolTimeoutError("pool exhausted"),
    DBAPIError("SELECT 1", {}, Exception("server closed"), connection_invalidated=True),
]


def _make(cls: type[errors.DomainError]) -> errors.DomainError:
    maker = MAKERS.get(cls)
    return maker() if maker else cls(f"{cls.__name__} happened")


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
    assert len(found) == len(rich.details)  # no detail of another kind
    return found


def _of(kind: type[Detail], details: list[object]) -> list[Detail]:
    return [d for d in details if isinstance(d, kind)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_each_error_class_names_a_real_grpc_status_code(cls: type[errors.DomainError]) -> None:
    assert cls.code_name in grpc.StatusCode.__members__
    assert cls.code_name != "OK"
    assert re.fullmatch(r"[A-Z][A-Z_]*", cls.reason)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_what_a_caller_gets_for_each_error_class(cls: type[errors.DomainError]) -> None:
    exc = _make(cls)
    status = to_status(exc)
    assert status.code == grpc.StatusCode[cls.code_name]
    assert status.details == exc.message
    assert status.details
    details = _details(status)
    infos = _of(error_details_pb2.ErrorInfo, details)
    assert len(infos) == 1
    assert (infos[0].reason, infos[0].domain) == (cls.reason, ERROR_DOMAIN)
    retry = _of(error_details_pb2.RetryInfo, details)
    # A slow consumer's cut-off is a cancellation: a code and a message, no details at all
    # (api.stream_guard), so its class promises no wait either.
    if status.code == grpc.StatusCode.RESOURCE_EXHAUSTED and cls is not errors.ConsumerTooSlow:
        waited = getattr(exc, "retry_after_seconds", None) or DEFAULT_GARMIN_RETRY_SECONDS
        assert [r.retry_delay.seconds for r in retry] == [math.ceil(waited)]
    else:
        assert retry == []
    bad_request = _of(error_details_pb2.BadRequest, details)
    if status.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert isinstance(exc, errors.InvalidArgument)
        assert len(bad_request) == 1
        assert [(v.field, v.description) for v in bad_request[0].field_violations] == [
            (v.field, v.description) for v in exc.violations
        ]
    else:
        assert bad_request == []


@pytest.mark.parametrize("cls", RAISED, ids=lambda cls: cls.__name__)
def test_every_raised_error_has_an_answer_of_its_own(cls: type[errors.DomainError]) -> None:
    assert row_for(_make(cls)) in documented_rows()


@pytest.mark.parametrize("exc", DATABASE_ERRORS, ids=lambda exc: type(exc).__name__)
def test_database_errors_answer_unavailable_without_the_driver_message(
    exc: BaseException,
) -> None:
    status = to_status(exc)
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.details == "the database is unavailable; retry later"
    infos = _of(error_details_pb2.ErrorInfo, _details(status))
    assert [(i.reason, i.domain) for i in infos] == [("DATABASE_UNAVAILABLE", ERROR_DOMAIN)]


def test_database_errors_never_leak_the_driver_message() -> None:
    status = to_status(
        OperationalError("SELECT", {}, Exception("password authentication failed for hunter2"))
    )
    assert "hunter2" not in status.details


def test_unexpected_exception_is_internal_without_details_leaking() -> None:
    status = to_status(RuntimeError("secret-token-abc123 exploded"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert "secret" not in status.details
    assert status.details


def _readme_error_table() -> list[tuple[str, str, str]]:
    section = README.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows.append((cells[0].strip("`"), cells[1].strip("`"), cells[3]))
    return rows


def test_the_readme_error_table_lists_every_answer_once() -> None:
    documented = [(code, reason) for code, reason, _ in _readme_error_table()]
    assert len(documented) == len(set(documented))
    assert set(documented) == {(row.code.name, row.reason) for row in documented_rows()}


def test_the_readme_names_the_extra_details_each_answer_carries() -> None:
    extras = {(code, reason): extra for code, reason, extra in _readme_error_table()}
    for cls in RAISED:
        details = _details(to_status(_make(cls)))
        extra = extras[(cls.code_name, cls.reason)]
        assert ("BadRequest" in extra) == bool(_of(error_details_pb2.BadRequest, details))
        assert ("RetryInfo" in extra) == bool(_of(error_details_pb2.RetryInfo, details))


def test_the_readme_says_what_internal_and_grpcs_own_refusals_carry() -> None:
    """INTERNAL is in no row (nothing is meant to cause it), and the answers that carry no
    ErrorInfo are named: before, the section said every error carries one, and the
    CONSUMER_TOO_SLOW row promised a RetryInfo its cut-off never carried."""
    section = README.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    intro = " ".join(section.split("\n| ", 1)[0].split())
    assert "`INTERNAL`: that code (reason `INTERNAL`" in intro
    for code in ("RESOURCE_EXHAUSTED", "UNIMPLEMENTED", "DEADLINE_EXCEEDED", "CONSUMER_TOO_SLOW"):
        assert f"`{code}`" in intro, code
    extras = {(code, reason): extra for code, reason, extra in _readme_error_table()}
    assert "RetryInfo" not in extras[("RESOURCE_EXHAUSTED", "CONSUMER_TOO_SLOW")]
