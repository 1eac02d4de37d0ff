"""A missing or malformed user_id is INVALID_ARGUMENT naming it (README, Errors), for a
scoped caller too; PERMISSION_DENIED CALLER_FORBIDDEN with `scope: user` means "that user is
outside the caller's user_id_prefix" (a worker skips it and goes on).

Before: LeaseSession validated the id first, but every other RPC naming a user ran the
servicer's scope check before any validation: an empty id (or " t:ann", a leading space)
was "outside the scope", so the caller was told that user is forbidden, never that its
request is malformed. (From a read-only review of bad input.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from auth_service.api.callers import token_sha256
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import ServiceFactory, expect_failure

pytestmark = pytest.mark.timeout(60)

SCOPED_ADMIN = "scoped-admin-token-0123456789abcdef"
SCOPED_WORKER = "scoped-worker-token-0123456789abcdef"


def _start(service_factory: ServiceFactory, tmp_path: Path) -> Any:
    callers = tmp_path / "scoped-callers.toml"
    callers.write_text(
        f'[[callers]]\nname = "tenant-admin"\ntoken_sha256 = "{token_sha256(SCOPED_ADMIN)}"\n'
        'roles = ["admin"]\nuser_id_prefix = "t:"\n\n'
        f'[[callers]]\nname = "tenant-worker"\ntoken_sha256 = "{token_sha256(SCOPED_WORKER)}"\n'
        'roles = ["worker"]\nuser_id_prefix = "t:"\n',
        encoding="utf-8",
    )
    return service_factory.start(callers_file=callers)


def _call(service: Any, token: str, rpc: str, request: Any) -> Any:
    metadata = (("authorization", f"Bearer {token}"),)
    return getattr(service.stub, rpc)(request, metadata=metadata, timeout=20)


CASES = [
    ("GetStatus", SCOPED_WORKER, pb.GetStatusRequest(user_id="")),
    ("GetStatus", SCOPED_ADMIN, pb.GetStatusRequest(user_id="")),
    ("DeleteSession", SCOPED_ADMIN, pb.DeleteSessionRequest(user_id="")),
    (
        "Login",
        SCOPED_ADMIN,
        pb.LoginRequest(user_id="", email="ann@example.com", password="secret-pass"),
    ),
    ("ImportSession", SCOPED_ADMIN, pb.ImportSessionRequest(user_id="", garth_token="x")),
    (
        "ExchangeServiceTicket",
        SCOPED_ADMIN,
        pb.ExchangeServiceTicketRequest(user_id="", service_ticket="ST-1-abcdefgh-sso"),
    ),
    ("GetStatus", SCOPED_ADMIN, pb.GetStatusRequest(user_id=" t:ann")),
]


def test_lease_session_names_the_missing_user_id(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """The reference: the same caller kind and the same empty id, on LeaseSession."""
    service = _start(service_factory, tmp_path)
    refused = expect_failure(
        lambda: _call(service, SCOPED_WORKER, "LeaseSession", pb.LeaseSessionRequest(holder="w"))
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert refused.field_violations == ["user_id"]


@pytest.mark.parametrize(
    ("rpc", "token", "request_"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_a_missing_or_malformed_user_id_is_invalid_argument_for_a_scoped_caller(
    service_factory: ServiceFactory, tmp_path: Path, rpc: str, token: str, request_: Any
) -> None:
    service = _start(service_factory, tmp_path)
    refused = expect_failure(lambda: _call(service, token, rpc, request_))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    ), f"{rpc}: {refused.code.name} {refused.reason}: {refused.message}"
    assert "user_id" in refused.field_violations
