"""A webhook shows a lease's lease_ref, as WatchSessionEvents does (README, Change stream and
webhooks: statuses show "the holder, fencing token and lease_ref"). Before, the webhook body
dropped it, and a receiver could not tie a lease in a webhook to ListAuditEvents' lease_ref or
to the stream's."""

from __future__ import annotations

import json

import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.servers import ServiceFactory
from tests.reliability import wait_until
from tests.stream import Follower, Receiver, connect, receiving, watch
from tests.stream.conftest import FAST_STREAM
from tests.stream.test_webhooks import _cursor_row, _hooks


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_webhook_shows_the_leases_ref_like_the_stream(service_factory: ServiceFactory) -> None:
    receiver = Receiver()
    with receiving(receiver) as port:
        replica = service_factory.start(stream=FAST_STREAM, webhooks=_hooks(port))
        wait_until(lambda: _cursor_row(replica) is not None, 10, "the webhook cursor")
        connect(replica.stub, "ann")
        replica.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id="ann", holder="w1"), role="worker"
        )
        wait_until(lambda: len(receiver.deliveries) >= 2, 20, "two webhooks")
    follower = Follower(watch(replica.stub, after_cursor="0")).start()
    streamed = follower.wait_changes(2)[1]
    follower.cancel()
    assert streamed.status.lease.lease_ref
    posted = json.loads(receiver.deliveries[1].body)["status"]["lease"]
    assert posted.get("lease_ref") == streamed.status.lease.lease_ref, posted
