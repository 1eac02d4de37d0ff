"""A graceful stop does not wait for the whole webhook backlog: the pass ends after its POST
in flight and the claim is handed over. Before, stop() joined a pass that went on "until it
caught up", so a backlog to a slow receiver outlasted the pod's grace (SIGKILL, exit 137) and
the claim was not handed over until its lease expired."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from auth_service.domain.changes import StreamSettings, WebhookSettings
from auth_service.storage.models import GarminWebhookCursor
from tests.fixtures.servers import ServiceFactory
from tests.reliability import reader, wait_until
from tests.stream import WEBHOOK_SECRET, Receiver, connect, receiving

FAST_STREAM = StreamSettings(
    max_watchers=8, heartbeat_seconds=0.5, poll_seconds=0.2, send_timeout_seconds=30
)


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_stop_does_not_wait_for_a_whole_webhook_backlog(service_factory: ServiceFactory) -> None:
    # A receiver that answers every POST with 200 after 1 s (slow, but working).
    receiver = Receiver(delay=1.0)
    with receiving(receiver) as port:
        hooks = WebhookSettings(
            url=f"http://127.0.0.1:{port}/hooks",
            secret=WEBHOOK_SECRET.encode(),
            timeout_seconds=5.0,
            poll_seconds=0.1,
        )
        replica = service_factory.start(webhooks=hooks, stream=FAST_STREAM)
        url = replica.running.application.settings.database_url

        def cursor() -> GarminWebhookCursor | None:
            with reader(url) as session:
                return session.execute(select(GarminWebhookCursor)).scalar_one_or_none()

        wait_until(lambda: cursor() is not None, 10, "the webhook cursor")
        for number in range(10):  # a backlog of 10 changes: 10 s of delivery
            connect(replica.stub, f"user-{number}")
        wait_until(lambda: receiver.in_flight >= 1, 10, "the first POST")

        service_factory.replicas.remove(replica)
        replica.channel.close()
        stopper = threading.Thread(target=replica.running.stop, kwargs={"grace": 0})
        started = time.monotonic()
        stopper.start()
        stopper.join(timeout=30)
        took = time.monotonic() - started
        delivered = len(receiver.deliveries)
    # One POST was in flight (at most 1 s); the rest of the backlog belongs to the next
    # claimant, to whom the stopping replica hands the claim over.
    assert took < 3.0, (
        f"stop() took {took:.1f} s: it delivered {delivered} webhooks of the backlog before "
        "releasing the claim (Kubernetes would SIGKILL it first)"
    )
