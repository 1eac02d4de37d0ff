"""The access line of a refused call names its caller when the credentials named one.

README, Logs: every call of GarminAuthService gets one access line (rpc, caller, outcome). A
CALLER_FORBIDDEN refusal for the caller's roles comes after its token (or client certificate)
was checked against the callers file: the line names that caller, which is the line an
operator looks for. A refusal decided before anyone was recognised (CALLER_UNAUTHENTICATED)
names nobody. Naming the caller is for the log only: the refused body never runs."""

from __future__ import annotations

import logging
import time

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import Replica, expect_failure

LOGIN = pb.LoginRequest(user_id="alice", email="alice@example.com", password="pw-123456")


def access_lines(caplog: pytest.LogCaptureFixture, rpc: str) -> list[logging.LogRecord]:
    """The access lines of `rpc`, once the batch writer wrote them."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        found = [
            r
            for r in caplog.records
            if r.name == "auth_service.rpc" and getattr(r, "rpc", None) == rpc
        ]
        if found:
            return found
        time.sleep(0.05)
    return []


def caller_and_outcome(caplog: pytest.LogCaptureFixture, rpc: str) -> list[tuple[object, ...]]:
    return [(r.caller, r.outcome) for r in access_lines(caplog, rpc)]  # type: ignore[attr-defined]


def test_a_role_refusal_names_the_known_caller(
    service: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="auth_service.rpc")
    failure = expect_failure(lambda: service.call("Login", LOGIN, role="viewer"))
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
    assert caller_and_outcome(caplog, "Login") == [("viewer-caller", "CALLER_FORBIDDEN")]
    # The body never ran, as that caller or anyone: nothing was audited.
    events = service.call("ListAuditEvents", pb.ListAuditEventsRequest(user_id="alice")).events
    assert [event.rpc for event in events] == []


def test_an_unauthenticated_refusal_names_nobody(
    service: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="auth_service.rpc")
    failure = expect_failure(lambda: service.call("Login", LOGIN, role=None))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLER_UNAUTHENTICATED",
    )
    assert caller_and_outcome(caplog, "Login") == [(None, "CALLER_UNAUTHENTICATED")]
