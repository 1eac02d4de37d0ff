"""A webhook POST ends by its deadline (twice GARMIN_AUTH_WEBHOOK_TIMEOUT: connect, then the
answer) however the receiver answers, on a new connection or on one kept alive from an earlier
POST; and the answer's body is read only up to ANSWER_BODY_BOUND: only its status matters, the
body is read to keep the connection for the next POST when it ends within the bound. So the
cursor's claim (4 x timeout + 10 s) outlasts every POST, one replica at a time delivers, a
stopping replica's last POST ends within its grace, and consecutive POSTs (one per change)
share one connection.

Before, the sender read the whole answer body with requests' per-read timeout only: a
receiver (or a proxy in front of it) answering 200 and then sending a byte every 0.25 s held a
POST for as long as it liked, past the claim (a second replica posted at the same time) and
past stop(); one sending a huge body had it downloaded into memory. Slow headers held it the
same way. A first fix left the body unread and closed each POST's connection, so every change
paid a new TCP (and TLS) handshake; and its deadline covered only the sockets it opened, not
one a POST takes from the pool."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
from sqlalchemy import select

from auth_service.domain.change_ports import WebhookUndelivered
from auth_service.domain.changes import WebhookSettings
from auth_service.storage.models import GarminWebhookCursor
from auth_service.upstream.webhook import HttpWebhookSender
from tests.fixtures.servers import Replica, ServiceFactory
from tests.reliability import reader, wait_until
from tests.stream import WEBHOOK_SECRET, connect
from tests.stream.conftest import StartReplica
from tests.stream.slow_receivers import SlowReceiver, serving

# With GARMIN_AUTH_WEBHOOK_TIMEOUT=1: the deadline is 2 s, the claim 14 s.
TIMEOUT = 1.0
BODY = b'{"cursor":"1"}'


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _sender(port: int) -> HttpWebhookSender:
    return HttpWebhookSender(
        f"http://127.0.0.1:{port}/hooks", WEBHOOK_SECRET.encode(), timeout_seconds=TIMEOUT
    )


def _timed_send(sender: HttpWebhookSender) -> float:
    """Seconds one POST took (delivered or not)."""
    started = time.monotonic()
    with contextlib.suppress(WebhookUndelivered):
        sender.send(BODY)
    return time.monotonic() - started


@pytest.mark.parametrize("mode", ["body", "headers"])
def test_a_trickling_receiver_cannot_hold_a_post_past_its_deadline(mode: str) -> None:
    receiver = SlowReceiver(mode, interval=0.25, duration=20.0)
    with serving(receiver) as port:
        took = _timed_send(_sender(port))
    assert took < 2 * TIMEOUT + 1.5, (
        f"one POST took {took:.1f} s with GARMIN_AUTH_WEBHOOK_TIMEOUT={TIMEOUT:g}: the "
        f"receiver trickled its {mode} a byte every 0.25 s"
    )


def test_posts_to_a_plain_receiver_share_one_connection() -> None:
    receiver = SlowReceiver("plain")
    with serving(receiver) as port:
        sender = _sender(port)
        for _ in range(3):
            sender.send(BODY)
        connections = receiver.connections
    assert connections == 1, (
        f"3 POSTs opened {connections} connections: each change paid a new handshake"
    )


@pytest.mark.parametrize("mode", ["body", "headers"])
def test_a_trickling_answer_on_a_kept_alive_connection_ends_at_the_deadline(mode: str) -> None:
    receiver = SlowReceiver(mode, first="plain", interval=0.25, duration=20.0)
    with serving(receiver) as port:
        sender = _sender(port)
        sender.send(BODY)  # answered at once: its connection waits in the pool
        took = _timed_send(sender)
        connections = receiver.connections
    assert connections == 1, "the second POST did not take the first one's connection"
    assert took < 2 * TIMEOUT + 1.5, (
        f"the second POST took {took:.1f} s with GARMIN_AUTH_WEBHOOK_TIMEOUT={TIMEOUT:g}: on "
        f"the kept-alive connection, the receiver trickled its {mode} a byte every 0.25 s"
    )


def test_an_answer_body_is_read_only_up_to_the_bound() -> None:
    # The first answer's body is 8 MiB; the second POST is answered plainly.
    receiver = SlowReceiver("plain", first="flood", flood=8 * 1024 * 1024)
    with serving(receiver) as port:
        sender = _sender(port)
        sender.send(BODY)
        wait_until(lambda: receiver.in_flight == 0, 10, "the receiver to finish its answer")
        sent = receiver.body_bytes_sent
        sender.send(BODY)
        connections = receiver.connections
    # Beyond the bound, only what the socket buffers took (the receiver keeps its own small).
    assert sent < 2 * 1024 * 1024, f"the sender downloaded {sent / 2**20:.1f} MiB of an answer"
    assert connections == 2, "the connection of an answer cut short served the next POST"


def _hooks(port: int) -> WebhookSettings:
    return WebhookSettings(
        url=f"http://127.0.0.1:{port}/hooks",
        secret=WEBHOOK_SECRET.encode(),
        timeout_seconds=TIMEOUT,
        poll_seconds=0.1,
    )


def _cursor(replica: Replica) -> Any:
    with reader(replica.running.application.settings.database_url) as session:
        return session.execute(select(GarminWebhookCursor)).scalar_one_or_none()


def test_stop_is_not_held_by_a_trickling_receiver(
    start_replica: StartReplica, service_factory: ServiceFactory
) -> None:
    receiver = SlowReceiver("body", duration=40.0)
    with serving(receiver) as port:
        replica = start_replica(webhooks=_hooks(port))
        wait_until(lambda: _cursor(replica) is not None, 10, "the webhook cursor")
        connect(replica.stub, "ann")
        wait_until(lambda: receiver.in_flight >= 1, 10, "the first POST")
        service_factory.replicas.remove(replica)
        replica.channel.close()
        stopper = threading.Thread(target=replica.running.stop, kwargs={"grace": 0}, daemon=True)
        started = time.monotonic()
        stopper.start()
        stopper.join(timeout=30)
        took = time.monotonic() - started
    assert took < 2 * TIMEOUT + 3, (
        f"stop() took {took:.1f} s: the POST in flight was held by a receiver trickling its "
        "answer (Kubernetes would SIGKILL the pod)"
    )


def test_two_replicas_never_post_at_once_to_a_trickling_receiver(
    start_replica: StartReplica,
) -> None:
    # Each POST would last 25 s, past the claim's 14 s.
    receiver = SlowReceiver("body", duration=25.0)
    with serving(receiver) as port:
        first = start_replica(webhooks=_hooks(port))
        wait_until(lambda: _cursor(first) is not None, 10, "the webhook cursor")
        start_replica(webhooks=_hooks(port))
        connect(first.stub, "ann")
        wait_until(lambda: receiver.posts >= 1, 10, "the first POST")
        deadline = time.monotonic() + 18  # past the first claim's expiry
        while time.monotonic() < deadline and receiver.most_in_flight < 2:
            time.sleep(0.2)
        most = receiver.most_in_flight
    assert most == 1, (
        f"{most} POSTs were in flight at once: a POST outlasted its replica's claim, and "
        "another replica took the claim and posted too"
    )
