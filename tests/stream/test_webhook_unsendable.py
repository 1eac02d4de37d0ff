"""A delivery pass whose POST cannot even be sent records a failed attempt and backs off, as for
any other undelivered webhook (README: "Anything but a 2xx is retried ... after a backoff").

Before, an error from the sender other than WebhookUndelivered ended the pass before
WebhookDelivery._failed: the cursor row never counted an attempt, no backoff was kept (the pass
ran again at every poll, for ever), and the log said only "webhooks pass failed
(<type>)", never which change was not delivered. The sender raised one for a host name urllib3
could not encode (LocationParseError); now the sender turns that into WebhookUndelivered, and
the delivery loop takes any error of a sender as a failed attempt."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from sqlalchemy import select

from auth_service.domain.changes import WebhookSettings
from auth_service.storage.models import GarminWebhookCursor
from auth_service.upstream.webhook import HttpWebhookSender
from tests.fixtures.servers import Replica
from tests.reliability import reader, wait_until
from tests.stream import WEBHOOK_SECRET, connect
from tests.stream.conftest import StartReplica

SECRET_IN_A_MESSAGE = "hunter2-in-an-error-message"


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _hooks(url: str) -> WebhookSettings:
    return WebhookSettings(
        url=url,
        secret=WEBHOOK_SECRET.encode(),
        timeout_seconds=1.0,
        backoff_initial_seconds=0.2,
        backoff_max_seconds=1.0,
        poll_seconds=0.1,
    )


def _cursor_row(replica: Replica) -> Any:
    with reader(replica.running.application.settings.database_url) as session:
        return session.execute(select(GarminWebhookCursor)).scalar_one_or_none()


def _attempts_after_one_change(start_replica: StartReplica, hooks: WebhookSettings) -> Any:
    """The cursor row 3 s after one change, every POST of it failing."""
    replica = start_replica(webhooks=hooks)
    wait_until(lambda: _cursor_row(replica) is not None, 10, "the webhook cursor")
    connect(replica.stub, "ann")
    time.sleep(3)
    return _cursor_row(replica)


def _not_delivered(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]


def test_a_post_to_an_unencodable_host_is_a_failed_attempt_with_backoff(
    start_replica: StartReplica, caplog: pytest.LogCaptureFixture
) -> None:
    """A doubled dot in the host (GARMIN_AUTH_WEBHOOK_URL refuses it now; WebhookSettings
    built otherwise does not)."""
    with caplog.at_level(logging.WARNING):
        row = _attempts_after_one_change(start_replica, _hooks("https://hooks..example.com/hooks"))
    assert row.attempts >= 1, (row.attempts, row.next_attempt_at)
    assert row.next_attempt_at is not None
    assert _not_delivered(caplog)


def test_any_error_of_the_sender_is_a_failed_attempt_never_quoting_its_message(
    start_replica: StartReplica,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender that breaks its contract (raises something other than WebhookUndelivered)
    still costs an attempt and its backoff; the warning names the error's type, never its
    message (it could quote the URL and its credentials)."""

    def broken(self: HttpWebhookSender, body: bytes) -> None:
        raise RuntimeError(f"cannot post to https://hooks:{SECRET_IN_A_MESSAGE}@example.com")

    monkeypatch.setattr(HttpWebhookSender, "send", broken)
    with caplog.at_level(logging.WARNING):
        row = _attempts_after_one_change(start_replica, _hooks("http://127.0.0.1:9/hooks"))
    assert row.attempts >= 1, (row.attempts, row.next_attempt_at)
    warnings = _not_delivered(caplog)
    assert warnings
    assert all("RuntimeError" in w and SECRET_IN_A_MESSAGE not in w for w in warnings)
    assert SECRET_IN_A_MESSAGE not in caplog.text
