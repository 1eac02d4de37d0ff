"""GetStatus(validate) is an admin's call, at most once per user per interval (issue 14,
finding 5): it calls Garmin and may refresh or end a session, so a viewer (or a worker) that
asks for it is refused before Garmin is called, and even an admin cannot turn it into a
flood on Garmin."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from auth_service.domain.clock import FakeClock
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.audit import connect, read_events
from tests.fixtures.servers import ServiceFactory, expect_failure

INTERVAL = 60.0


@pytest.mark.parametrize("role", ["viewer", "worker", "worker_full"])
def test_only_an_admin_may_validate(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str, role: str
) -> None:
    service = service_factory.start()
    connect(service, garmin, "ann")
    before_garmin, before_events = garmin.request_count(), len(read_events(database_url))

    refused = expect_failure(
        lambda: service.call(
            "GetStatus", pb.GetStatusRequest(user_id="ann", validate=True), role=role
        )
    )

    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CALLER_FORBIDDEN",
    )
    assert "validate" in refused.message
    assert garmin.request_count() == before_garmin
    assert len(read_events(database_url)) == before_events
    # Reading stays open to the role.
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="ann"), role=role).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    # And an admin may validate.
    service.call("GetStatus", pb.GetStatusRequest(user_id="ann", validate=True), role="admin")
    assert garmin.request_count() > before_garmin


def test_an_admin_validates_a_user_at_most_once_per_interval(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    refresh = replace(service_factory.base_settings.refresh, validate_interval_seconds=INTERVAL)
    service = service_factory.start(clock=clock, refresh=refresh)
    connect(service, garmin, "ann")
    connect(service, garmin, "bob")
    validate = pb.GetStatusRequest(user_id="ann", validate=True)
    service.call("GetStatus", validate)
    after_first = garmin.request_count()

    clock.advance(INTERVAL - 15)
    refused = expect_failure(lambda: service.call("GetStatus", validate))

    assert (refused.code, refused.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "VALIDATE_RATE_LIMITED",
    )
    assert refused.retry_seconds == 15
    assert garmin.request_count() == after_first
    # Other users have limits of their own; reading without validate is never limited.
    service.call("GetStatus", pb.GetStatusRequest(user_id="bob", validate=True))
    service.call("GetStatus", pb.GetStatusRequest(user_id="ann"))
    # Once the interval is over, Garmin is asked again.
    clock.advance(15)
    before = garmin.request_count()
    service.call("GetStatus", validate)
    assert garmin.request_count() > before


def test_a_validation_refused_without_garmin_does_not_start_the_interval(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """The interval counts validations that reach Garmin. One the gate refuses for the
    account's cooldown (Garmin not called) leaves it unstarted: once the cooldown is over, an
    admin's validation goes to Garmin. Before, the refused one started it, and the first ask
    after the cooldown answered VALIDATE_RATE_LIMITED. Found by a read-only review."""
    clock = FakeClock(datetime.now(UTC))
    refresh = replace(service_factory.base_settings.refresh, validate_interval_seconds=INTERVAL)
    service = service_factory.start(clock=clock, refresh=refresh)
    connect(service, garmin, "ann")
    # A worker met Garmin's 429 on the Connect API for ann: her account cools down 30 s.
    grant = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="ann", holder="w"), role="worker"
    )
    cooldown = Duration(seconds=30)
    service.call(
        "ReleaseLease",
        pb.ReleaseLeaseRequest(lease_id=grant.lease.lease_id, garmin_retry_after=cooldown),
        role="worker",
    )
    validate = pb.GetStatusRequest(user_id="ann", validate=True)
    before = garmin.request_count()
    held_back = expect_failure(lambda: service.call("GetStatus", validate))
    assert held_back.reason == "GARMIN_RATE_LIMITED"
    assert garmin.request_count() == before

    clock.advance(31)
    service.call("GetStatus", validate)  # VALIDATE_RATE_LIMITED before the fix
    assert garmin.request_count() > before
