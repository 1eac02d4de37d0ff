"""A caller whose user_id_prefix is narrowed in the callers file can no longer renew, refresh or
report on a lease it holds on a user outside its new scope (LEASE_LOST, as for a lease it never
held); it may still release it, which only gives the user back.

README ("Callers"): the file is re-read when it changes, and a caller entry with
`user_id_prefix` reaches only users whose id starts with it. Before, holder calls checked only
the caller's name (lease_caller), never its current scope: after the operator moved tenant "b:"
away from this worker it could keep the user leased for ever (RenewLease) and mint new Garmin
access tokens for it (RefreshLease). Real gRPC replica, emulator over HTTP, both databases.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from auth_service.api.callers import token_sha256
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ROLE_TOKENS, ServiceFactory, failure_of
from tests.worker import connect

pytestmark = pytest.mark.timeout(60)

WORKER_TOKEN = "tenant-worker-token-0123456789abcdef"


def _callers(prefix: str | None) -> str:
    scope = "" if prefix is None else f'user_id_prefix = "{prefix}"\n'
    return (
        f'[[callers]]\nname = "admin"\ntoken_sha256 = "{token_sha256(ROLE_TOKENS["admin"])}"\n'
        'roles = ["admin"]\n\n'
        f'[[callers]]\nname = "tenant-worker"\ntoken_sha256 = "{token_sha256(WORKER_TOKEN)}"\n'
        f'roles = ["worker"]\n{scope}'
    )


def test_holder_calls_stop_at_the_callers_narrowed_scope(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(_callers(None), encoding="utf-8")
    replica = service_factory.start(callers_file=callers)
    connect(replica, garmin, "b:bea")
    connect(replica, garmin, "b:bob")
    metadata = (("authorization", f"Bearer {WORKER_TOKEN}"),)

    def as_worker(rpc: str, request: object) -> object:
        return getattr(replica.stub, rpc)(request, metadata=metadata, timeout=20)

    granted = as_worker("LeaseSession", pb.LeaseSessionRequest(user_id="b:bea", holder="w"))
    lease_id = granted.lease.lease_id  # type: ignore[attr-defined]
    version = granted.status.session_version  # type: ignore[attr-defined]

    # The operator moves tenant b: away from this worker: it may reach a: users only now.
    callers.write_text(_callers("a:"), encoding="utf-8")
    future = time.time() + 5
    os.utime(callers, (future, future))
    deadline = time.monotonic() + 15
    while True:
        try:
            probe = as_worker("LeaseSession", pb.LeaseSessionRequest(user_id="b:bob", holder="w"))
        except grpc.RpcError as error:
            reloaded = failure_of(error).reason
            break
        released = pb.ReleaseLeaseRequest(lease_id=probe.lease.lease_id)  # type: ignore[attr-defined]
        as_worker("ReleaseLease", released)
        assert time.monotonic() < deadline, "the replica never reloaded the callers file"
        time.sleep(0.2)

    assert reloaded == "CALLER_FORBIDDEN"
    answers = {}
    for rpc, request in (
        ("RenewLease", pb.RenewLeaseRequest(lease_id=lease_id)),
        ("RefreshLease", pb.RefreshLeaseRequest(lease_id=lease_id, session_version=version)),
        ("ReportInvalidated", pb.ReportInvalidatedRequest(lease_id=lease_id, reason="test")),
    ):
        try:
            as_worker(rpc, request)
            answers[rpc] = "OK"
        except grpc.RpcError as error:
            failure = failure_of(error)
            answers[rpc] = f"{failure.code.name} {failure.reason}"
    # b:bea is outside the caller's scope now: nothing more for it (refused as out of scope,
    # or as a lease the caller no longer holds).
    assert set(answers.values()) == {"FAILED_PRECONDITION LEASE_LOST"}, (
        f"after the scope narrowed to a:, {answers}"
    )
    # The session was left alone, and the lease may still be given back.
    status = as_worker("ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease_id)).status  # type: ignore[attr-defined]
    assert (status.state, status.HasField("lease")) == (pb.SESSION_STATE_ACTIVE, False)
