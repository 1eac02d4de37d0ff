"""The audit trail records the answer the caller gets."""

from __future__ import annotations

from auth_service.api.errors import row_for
from auth_service.domain import audit, errors
from auth_service.domain.context import current_caller_name


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
