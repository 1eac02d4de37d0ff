"""A caller's user_id_prefix must be matched exactly (case included) in every listing, as it is
for GetStatus, LeaseSession and LeaseNextSession. User ids are case-sensitive ("t:ann" and
"T:bob" are two users), but the listings filter with SQL LIKE, which SQLite compares
case-insensitively for ASCII: a viewer scoped to "t:" then lists, reads the audit trail of and
watches the changes of tenant "T:"'s users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from auth_service.api.callers import token_sha256
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ROLE_TOKENS, ServiceFactory, expect_failure
from tests.worker import connect

pytestmark = pytest.mark.timeout(60)

SCOPED_TOKEN = "scoped-viewer-token-0123456789abcdef"


def _start(service_factory: ServiceFactory, tmp_path: Path) -> Any:
    callers = tmp_path / "scoped-callers.toml"
    callers.write_text(
        f'[[callers]]\nname = "admin"\ntoken_sha256 = "{token_sha256(ROLE_TOKENS["admin"])}"\n'
        'roles = ["admin"]\n\n'
        f'[[callers]]\nname = "tenant-t-viewer"\ntoken_sha256 = "{token_sha256(SCOPED_TOKEN)}"\n'
        'roles = ["viewer"]\nuser_id_prefix = "t:"\n',
        encoding="utf-8",
    )
    return service_factory.start(callers_file=callers)


def _scoped(service: Any, rpc: str, request: Any) -> Any:
    metadata = (("authorization", f"Bearer {SCOPED_TOKEN}"),)
    return getattr(service.stub, rpc)(request, metadata=metadata, timeout=20)


def test_a_scoped_viewer_lists_only_its_users_whatever_their_case(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    service = _start(service_factory, tmp_path)
    connect(service, garmin, "t:ann")
    connect(service, garmin, "T:bob")
    # The scope check on one user is exact: "T:bob" is another tenant's user.
    refused = expect_failure(
        lambda: _scoped(service, "GetStatus", pb.GetStatusRequest(user_id="T:bob"))
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")

    listed = _scoped(service, "ListSessions", pb.ListSessionsRequest()).sessions
    assert [status.user_id for status in listed] == ["t:ann"]


def test_a_scoped_viewer_reads_only_its_users_audit_events_whatever_their_case(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    service = _start(service_factory, tmp_path)
    connect(service, garmin, "t:ann")
    connect(service, garmin, "T:bob")
    events = _scoped(service, "ListAuditEvents", pb.ListAuditEventsRequest()).events
    assert events
    assert {event.user_id for event in events} == {"t:ann"}


def test_a_scoped_viewer_watches_only_its_users_whatever_their_case(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    service = _start(service_factory, tmp_path)
    connect(service, garmin, "T:bob")
    connect(service, garmin, "t:ann")
    stream = _scoped(service, "WatchSessionEvents", pb.WatchSessionEventsRequest(after_cursor="0"))
    try:
        first = next(iter(stream))
    finally:
        stream.cancel()
    # The first change the scoped viewer sees must be about its own user, never T:bob's.
    assert first.HasField("status")
    assert first.status.user_id == "t:ann"
