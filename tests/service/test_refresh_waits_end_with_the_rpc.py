"""A refresh's waits end in time to answer the RPC that asked for it (and a call without a
deadline waits as before: found by review, grpc's "no deadline" read as a 9.2e18 s one made
the slot wait raise OverflowError, INTERNAL).

A grant or RefreshLease may wait for one of the replica's refresh slots (all out to a slow
Garmin) or for another replica's claim on the session. The slot wait had no end, and the claim
wait ended after the Garmin call's worst case + 10 s (40 s by default): a caller whose deadline
was shorter got DEADLINE_EXCEEDED, which says nothing of Garmin (the worker read it as "the
auth service is down"), while the service went on waiting and refreshing for nobody. Now both
waits end half a second before the RPC's deadline with `UNAVAILABLE GARMIN_UNAVAILABLE`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.policies import LoginFlow, RefreshSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import EXCHANGE_PATH, GarminEmulator
from tests.fixtures.servers import ROLE_TOKENS, ServiceFactory, failure_of
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

DEADLINE = 3.0
HANG = 8.0


def _lease(replica: object, user: str, timeout: float) -> pb.LeaseSessionResponse:
    return replica.call(  # type: ignore[attr-defined,no-any-return]
        "LeaseSession", pb.LeaseSessionRequest(user_id=user, holder="w"), "worker", timeout
    )


def test_a_grant_waiting_for_a_busy_refresh_slot_answers_before_its_deadline(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    replica = service_factory.start(
        clock=clock,
        login_flow=LoginFlow.GARTH,
        refresh=RefreshSettings(concurrency=1, validate_interval_seconds=0.0),
        # Ann's refresh keeps the slot past bob's deadline (the suite's 2 s would not).
        upstream=dataclasses.replace(service_factory.base_settings.upstream, timeout_seconds=HANG),
    )
    for user in ("ann", "bob"):
        garmin.add_user(f"{user}@example.com", PASSWORD)
        login(replica, user, f"{user}@example.com")
    clock.advance(2 * 86400)  # both access tokens have expired: every grant refreshes
    # Garmin's exchange hangs: ann's grant takes the one refresh slot and keeps it.
    garmin.fail_next(EXCHANGE_PATH, "hang", count=10, delay=HANG)
    first = threading.Thread(target=lambda: _try(lambda: _lease(replica, "ann", 30)))
    first.start()
    time.sleep(0.5)

    try:
        _answered_unavailable_in_time(lambda: _lease(replica, "bob", DEADLINE))
    finally:
        first.join(HANG + 20)


def test_a_refresh_lease_waiting_for_another_replicas_claim_answers_before_its_deadline(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    settings = RefreshSettings(validate_interval_seconds=0.0)
    # The first replica's refresh keeps its claim past the retry's deadline.
    slow = dataclasses.replace(service_factory.base_settings.upstream, timeout_seconds=HANG)
    first = service_factory.start(login_flow=LoginFlow.GARTH, refresh=settings, upstream=slow)
    second = service_factory.start(login_flow=LoginFlow.GARTH, refresh=settings)
    garmin.add_user("cy@example.com", PASSWORD)
    login(first, "cy", "cy@example.com")
    grant = _lease(first, "cy", 10)
    # The holder's first RefreshLease claims the session and hangs in Garmin's exchange.
    garmin.fail_next(EXCHANGE_PATH, "hang", count=1, delay=HANG)
    request = pb.RefreshLeaseRequest(
        lease_id=grant.lease.lease_id, session_version=grant.status.session_version
    )
    hanging = threading.Thread(
        target=lambda: _try(lambda: first.call("RefreshLease", request, "worker", 30))
    )
    hanging.start()
    time.sleep(0.5)

    # Its retry reaches the other replica, which finds the claim and waits on it.
    try:
        _answered_unavailable_in_time(
            lambda: second.call("RefreshLease", request, "worker", DEADLINE)
        )
    finally:
        hanging.join(HANG + 20)


SLOW = 3.0  # an exchange slow to answer, within the upstream timeout


def test_a_grant_without_deadline_waits_for_a_busy_refresh_slot(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    replica = service_factory.start(
        clock=clock,
        login_flow=LoginFlow.GARTH,
        refresh=RefreshSettings(concurrency=1, validate_interval_seconds=0.0),
        upstream=dataclasses.replace(service_factory.base_settings.upstream, timeout_seconds=10),
    )
    for user in ("ann", "bob"):
        garmin.add_user(f"{user}@example.com", PASSWORD)
        login(replica, user, f"{user}@example.com")
    clock.advance(2 * 86400)  # both access tokens expired: every grant refreshes
    # Ann's exchange is slow (but answers): she keeps the only refresh slot for a while.
    garmin.fail_next(EXCHANGE_PATH, "hang", count=1, delay=SLOW)
    metadata = (("authorization", f"Bearer {ROLE_TOKENS['worker']}"),)

    def lease(user: str) -> pb.LeaseSessionResponse:
        # No timeout: the client sets no deadline (grpcurl's default, many clients').
        answer: pb.LeaseSessionResponse = replica.stub.LeaseSession(
            pb.LeaseSessionRequest(user_id=user, holder="w"), metadata=metadata, timeout=None
        )
        return answer

    first = threading.Thread(target=lambda: _try(lambda: lease("ann")))
    first.start()
    time.sleep(0.5)
    try:
        answer = lease("bob")
    except grpc.RpcError as error:
        refused = failure_of(error)
        pytest.fail(
            f"bob's grant without a deadline answered {refused.code.name} "
            f"{refused.reason}: {refused.message}"
        )
    finally:
        first.join(SLOW + 20)
    assert answer.lease.user_id == "bob"


def _answered_unavailable_in_time(call: Callable[[], object]) -> None:
    """`call` (with a DEADLINE) answers GARMIN_UNAVAILABLE before its deadline."""
    started = time.monotonic()
    try:
        call()
    except grpc.RpcError as error:
        refused, seconds = failure_of(error), time.monotonic() - started
    else:
        pytest.fail("answered while the refresh it waits for was still out")
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "GARMIN_UNAVAILABLE",
    ), f"answered {refused.code.name} {refused.reason} after {seconds:.1f}s"
    assert seconds < DEADLINE


def _try(call: object) -> None:
    with contextlib.suppress(grpc.RpcError):
        call()  # type: ignore[operator]
