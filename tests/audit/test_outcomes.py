"""The audit trail's outcomes and the gRPC error table are one mapping, kept in one place."""

from __future__ import annotations

import pytest

from auth_service.api.errors import ERROR_TABLE, INTERNAL_ROW, row_for
from auth_service.domain import audit, errors
from auth_service.domain.context import current_caller_name


def _domain_error_classes() -> list[type[errors.DomainError]]:
    found: list[type[errors.DomainError]] = []
    pending: list[type[errors.DomainError]] = [errors.DomainError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", _domain_error_classes(), ids=lambda cls: cls.__name__)
def test_each_domain_error_names_the_answer_the_error_table_gives(
    cls: type[errors.DomainError],
) -> None:
    row = next((ERROR_TABLE[c] for c in cls.__mro__ if c in ERROR_TABLE), INTERNAL_ROW)
    assert (cls.code_name, cls.reason) == (row.code.name, row.reason)


def test_every_domain_error_in_the_table_is_covered() -> None:
    in_table = {cls for cls in ERROR_TABLE if issubclass(cls, errors.DomainError)}
    assert in_table <= set(_domain_error_classes())
    # Every error the domain declares has a row of its own (no INTERNAL fallback).
    declared = {cls for cls in _domain_error_classes() if cls.__module__ == errors.__name__} - {
        errors.DomainError,
        errors.UpstreamError,
    }
    assert declared <= in_table


def test_outcome_of_matches_the_answer() -> None:
    error = errors.MfaCodeRejected("no")
    assert audit.outcome_of(error) == audit.Outcome("PERMISSION_DENIED", "MFA_CODE_REJECTED")
    row = row_for(error)
    assert audit.outcome_of(error) == audit.Outcome(row.code.name, row.reason)
    assert audit.outcome_of(RuntimeError("boom")) == audit.Outcome("INTERNAL", "INTERNAL")
    assert audit.outcome_of(errors.LeaseLost("gone")) == audit.LEASE_LOST


def test_caller_name_is_system_outside_an_rpc() -> None:
    assert audit.caller_name() == "system"
    token = current_caller_name.set("x" * 1000)
    try:
        assert audit.caller_name() == "x" * 256  # the column's length
    finally:
        current_caller_name.reset(token)
