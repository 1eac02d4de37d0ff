"""Webhooks (issue 16): signed POSTs a receiver can verify, every change delivered after the
receiver was down for a while, and never two replicas delivering at once. The receiver is a
real HTTP server; the backoff is shortened so "down for a minute" takes seconds."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from auth_service.domain.changes import WebhookSettings
from auth_service.storage.audit_pruning import prune_audit
from auth_service.storage.models import GarminWebhookCursor
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import Replica
from tests.reliability import free_port, reader, wait_until
from tests.stream import (
    WEBHOOK_SECRET,
    Delivery,
    Receiver,
    connect,
    disconnect,
    receiving,
    verify,
)
from tests.stream.conftest import StartReplica


def _hooks(port: int) -> WebhookSettings:
    return WebhookSettings(
        url=f"http://127.0.0.1:{port}/hooks",
        secret=WEBHOOK_SECRET.encode(),
        timeout_seconds=2.0,
        backoff_initial_seconds=0.2,
        backoff_max_seconds=1.0,
        poll_seconds=0.1,
    )


def _cursors(deliveries: list[Delivery]) -> list[int]:
    return [int(json.loads(d.body)["cursor"]) for d in deliveries]


def _cursor_row(replica: Replica) -> Any:
    with reader(replica.running.application.settings.database_url) as session:
        return session.execute(select(GarminWebhookCursor)).scalar_one_or_none()


def test_webhooks_are_signed_and_carry_the_change(start_replica: StartReplica) -> None:
    receiver = Receiver()
    with receiving(receiver) as port:
        replica = start_replica(webhooks=_hooks(port))
        # The cursor starts where the log stood when webhooks were first switched on.
        wait_until(lambda: _cursor_row(replica) is not None, 10, "the webhook cursor")
        connect(replica.stub, "ann")
        grant = replica.call(
            "LeaseSession",
            pb.LeaseSessionRequest(user_id="ann", holder="w1"),
            role="worker",
        )
        disconnect(replica.stub, "ann")
        wait_until(lambda: len(receiver.deliveries) >= 3, 20, "three webhooks")
    first, leased, deleted = receiver.deliveries[:3]
    assert all(verify(delivery) for delivery in (first, leased, deleted))
    assert not verify(first, secret="another-secret-0123456789")
    timestamp = int(first.signature.split(",")[0].removeprefix("t="))
    assert abs(time.time() - timestamp) < 60
    body = json.loads(first.body)
    assert (body["cursor"], body["rpc"], body["status"]["user_id"], body["status"]["state"]) == (
        "1",
        "ImportSession",
        "ann",
        "ACTIVE",
    )
    assert json.loads(leased.body)["status"]["lease"]["holder"] == "w1"
    assert json.loads(deleted.body)["status"]["state"] == "NOT_CONNECTED"
    for delivery in receiver.deliveries:
        for secret in (grant.lease.lease_id, "access-ann", "refresh-ann", "secret-ann"):
            assert secret.encode() not in delivery.body
        assert WEBHOOK_SECRET.encode() not in delivery.body


def test_a_receiver_that_was_down_gets_every_change_when_it_returns(
    start_replica: StartReplica,
) -> None:
    port = free_port()
    replica = start_replica(webhooks=_hooks(port))
    wait_until(lambda: _cursor_row(replica) is not None, 10, "the webhook cursor")
    # The receiver is down (nothing listens): changes pile up in the log.
    for number in range(6):
        connect(replica.stub, f"user-{number}")
    # "A minute" of attempts: with a 0.2 s backoff doubling to 1 s, several of them.
    wait_until(lambda: _cursor_row(replica).attempts >= 3, 20, "several failed attempts")
    assert _cursor_row(replica).delivered_through == 0
    receiver = Receiver()
    with receiving(receiver, port):
        for number in range(6, 8):
            connect(replica.stub, f"user-{number}")
        wait_until(lambda: len(receiver.deliveries) >= 8, 20, "every change")
    assert _cursors(receiver.deliveries) == list(range(1, 9))
    assert _cursor_row(replica).delivered_through == 8
    assert _cursor_row(replica).attempts == 0


def test_a_failing_receiver_gets_the_same_change_again_in_order(
    start_replica: StartReplica,
) -> None:
    receiver = Receiver(status=503)
    with receiving(receiver) as port:
        replica = start_replica(webhooks=_hooks(port))
        wait_until(lambda: _cursor_row(replica) is not None, 10, "the webhook cursor")
        connect(replica.stub, "a")
        connect(replica.stub, "b")
        wait_until(lambda: _cursor_row(replica).attempts >= 2, 20, "failed attempts")
        receiver.status = 200
        wait_until(lambda: len(receiver.deliveries) >= 2, 20, "both changes")
    assert _cursors(receiver.deliveries) == [1, 2]


def test_two_replicas_never_deliver_at_once(start_replica: StartReplica) -> None:
    receiver = Receiver(delay=0.05)
    with receiving(receiver) as port:
        replicas = [start_replica(webhooks=_hooks(port)) for _ in range(2)]
        wait_until(lambda: _cursor_row(replicas[0]) is not None, 10, "the webhook cursor")
        for number in range(10):
            connect(replicas[number % 2].stub, f"user-{number}")
        wait_until(lambda: len(receiver.deliveries) >= 10, 30, "ten webhooks")
        # The claimant stops (handing its claim over); the other replica goes on.
        claimant = _cursor_row(replicas[0]).claimed_by
        for replica in replicas:
            hooks = replica.running.application.use_cases.webhooks
            if hooks is not None and hooks.replica == claimant:
                replica.stop()
                other = replicas[1 - replicas.index(replica)]
        for number in range(10, 20):
            connect(other.stub, f"user-{number}")
        wait_until(lambda: len(receiver.deliveries) >= 20, 30, "twenty webhooks")
    assert receiver.most_in_flight == 1
    assert _cursors(receiver.deliveries) == list(range(1, 21))


def test_changes_pruned_before_delivery_are_reported_and_skipped_once(
    start_replica: StartReplica, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Webhooks down for longer than the retention: prune-audit deletes changes never
    delivered. Before: the cursor moved over them without a word; now one error line names
    the gap, the cursor moves over it once, and what follows is delivered."""
    port = free_port()
    replica = start_replica(webhooks=_hooks(port))
    wait_until(lambda: _cursor_row(replica) is not None, 10, "the webhook cursor")
    for number in range(3):
        connect(replica.stub, f"user-{number}")
    wait_until(lambda: _cursor_row(replica).attempts >= 1, 20, "a failed attempt")
    engine = create_engine(database_url, poolclass=NullPool)
    prune_audit(engine, timedelta(0))  # changes 1-3, never delivered
    engine.dispose()
    receiver = Receiver()
    with (
        caplog.at_level(logging.ERROR, logger="auth_service.services.webhooks"),
        receiving(receiver, port),
    ):
        connect(replica.stub, "user-3")
        wait_until(lambda: len(receiver.deliveries) >= 1, 20, "the change after the gap")
    assert _cursors(receiver.deliveries) == [4]
    gaps = [r.getMessage() for r in caplog.records if "pruned before delivery" in r.getMessage()]
    assert gaps == [
        "webhooks: changes after cursor 0 up to 3 were pruned before delivery; "
        "the receiver must read the statuses (ListSessions) to catch up"
    ]
