"""A caller whose user_id_prefix was narrowed away from a user may still release the lease it
holds on that user, which only gives the user back (tests/leases/
test_scope_narrowed_mid_lease.py; README "Callers": its RenewLease, RefreshLease and
ReportInvalidated answer LEASE_LOST). Before, a garmin_retry_after on that release also
started the account's Connect API cooldown: the out-of-scope caller held the user back from
the worker now in charge of it for up to GARMIN_AUTH_RATE_LIMIT_MAX_WAIT. Now the release
is done and no cooldown starts. (From a review of the change.)"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from auth_service.api.callers import token_sha256
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ROLE_TOKENS, ServiceFactory, failure_of
from tests.worker import connect

pytestmark = pytest.mark.timeout(60)

TENANT_TOKEN = "tenant-worker-token-0123456789abcdef"
B_TOKEN = "b-worker-token-0123456789abcdef0123"


def _callers(prefix: str | None) -> str:
    scope = "" if prefix is None else f'user_id_prefix = "{prefix}"\n'
    return (
        f'[[callers]]\nname = "admin"\ntoken_sha256 = "{token_sha256(ROLE_TOKENS["admin"])}"\n'
        'roles = ["admin"]\n\n'
        f'[[callers]]\nname = "b-worker"\ntoken_sha256 = "{token_sha256(B_TOKEN)}"\n'
        'roles = ["worker"]\nuser_id_prefix = "b:"\n\n'
        f'[[callers]]\nname = "tenant-worker"\ntoken_sha256 = "{token_sha256(TENANT_TOKEN)}"\n'
        f'roles = ["worker"]\n{scope}'
    )


def test_an_out_of_scope_release_cannot_start_the_accounts_cooldown(
    service_factory: ServiceFactory, garmin: GarminEmulator, tmp_path: Path
) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(_callers(None), encoding="utf-8")
    replica = service_factory.start(callers_file=callers)
    connect(replica, garmin, "b:bea")
    connect(replica, garmin, "b:bob")

    def call(token: str, rpc: str, request: object) -> object:
        metadata = (("authorization", f"Bearer {token}"),)
        return getattr(replica.stub, rpc)(request, metadata=metadata, timeout=20)

    granted = call(
        TENANT_TOKEN, "LeaseSession", pb.LeaseSessionRequest(user_id="b:bea", holder="w")
    )
    lease_id = granted.lease.lease_id  # type: ignore[attr-defined]

    # The operator moves tenant b: away from this worker (b-worker is in charge of it now).
    callers.write_text(_callers("a:"), encoding="utf-8")
    future = time.time() + 5
    os.utime(callers, (future, future))
    deadline = time.monotonic() + 15
    refused = ""
    while not refused:
        try:
            probe = call(
                TENANT_TOKEN, "LeaseSession", pb.LeaseSessionRequest(user_id="b:bob", holder="w")
            )
        except grpc.RpcError as error:
            refused = failure_of(error).reason
            break
        probe_id = probe.lease.lease_id  # type: ignore[attr-defined]
        call(TENANT_TOKEN, "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=probe_id))
        assert time.monotonic() < deadline, "the replica never reloaded the callers file"
        time.sleep(0.2)
    assert refused == "CALLER_FORBIDDEN"

    # Out of scope now: RenewLease/RefreshLease/ReportInvalidated answer LEASE_LOST. The
    # release is still allowed, to give the user back: here it also reports a 429.
    call(
        TENANT_TOKEN,
        "ReleaseLease",
        pb.ReleaseLeaseRequest(lease_id=lease_id, garmin_retry_after=timedelta(hours=1)),
    )

    try:
        call(B_TOKEN, "LeaseSession", pb.LeaseSessionRequest(user_id="b:bea", holder="b"))
        answer = "OK"
    except grpc.RpcError as error:
        failure = failure_of(error)
        answer = f"{failure.code.name} {failure.reason} retry={failure.retry_seconds}"
    assert answer == "OK", (
        "a caller whose scope no longer covers b:bea held it back from the worker in "
        f"charge of it: {answer}"
    )
