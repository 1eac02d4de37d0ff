"""A holder's RefreshLease calls that wait on the session's one refresh, which Garmin then
rejects, answer what the refresh itself answers: FAILED_PRECONDITION SESSION_NOT_ACTIVE
(README lease table: "also when the service's own refresh, at the grant or in RefreshLease,
was rejected"). LEASE_LOST is documented for a lease that expired and was taken over, was
released, a session deleted or replaced, or another caller: none of which happened here.
Before, only the call that met the rejection got SESSION_NOT_ACTIVE; the three that waited on
it got LEASE_LOST, and a worker filed the user as a lost lease instead of "reconnect".

Real gRPC replica, the emulator over real HTTP, both databases."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import EXCHANGE_PATH, GarminEmulator
from tests.fixtures.servers import Replica, failure_of
from tests.worker import connect

pytestmark = pytest.mark.timeout(90)

ASKERS = 4


def test_refresh_lease_calls_waiting_on_a_rejected_refresh_answer_session_not_active(
    service: Replica, garmin: GarminEmulator
) -> None:
    email = connect(service, garmin, "rj-user")
    granted = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rj-user", holder="w"), role="worker"
    )
    version = granted.status.session_version
    # Garmin ends the account; its answer to the one refresh takes a moment, so every
    # holder thread's RefreshLease arrives while it is in flight (the first claims it, the
    # others wait on the claim, as README "RefreshLease" promises one refresh per version).
    garmin.revoke_tokens(email)
    exchanges_before = garmin.request_count(EXCHANGE_PATH)
    garmin.fail_next(EXCHANGE_PATH, None, delay=1.0)
    barrier = threading.Barrier(ASKERS)

    def ask(_: int) -> str:
        barrier.wait()
        request = pb.RefreshLeaseRequest(lease_id=granted.lease.lease_id, session_version=version)
        try:
            service.call("RefreshLease", request, role="worker")
        except grpc.RpcError as error:
            failure = failure_of(error)
            return f"{failure.code.name} {failure.reason}"
        return "OK"

    with ThreadPoolExecutor(max_workers=ASKERS) as pool:
        answers = list(pool.map(ask, range(ASKERS)))

    assert garmin.request_count(EXCHANGE_PATH) - exchanges_before == 1, "one refresh at Garmin"
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="rj-user"), role="admin")
    assert status.status.state == pb.SESSION_STATE_AUTH_EXPIRED
    assert sorted(answers) == ["FAILED_PRECONDITION SESSION_NOT_ACTIVE"] * ASKERS, (
        f"holder threads waiting on the refresh Garmin rejected were answered {sorted(answers)}"
    )
