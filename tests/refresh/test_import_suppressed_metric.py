"""garmin_auth_garmin_calls_suppressed_total counts calls answered GARMIN_RATE_LIMITED without
Garmin (README, Metrics; one per call: tests/limits/test_suppressed_counted_once.py).

Found by review, before the fix: a token file sent twice at once (a client's retry): the second
ImportSession found the first one's claim on the account's call, was refused inside (GarminGate
counted a suppressed `in_flight` call), waits for the first import and then answers OK (a retry:
nothing installed). No call was answered GARMIN_RATE_LIMITED, yet the metric moved; an import
that waits out wait_seconds and is then answered in flight counts two (the admission's refusal
and wait_for_call's)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.service.test_metrics import moved, with_metrics

pytestmark = pytest.mark.timeout(60)

EMAIL = "sue@example.com"
HOLD_SECONDS = 1.2  # under the servers fixture's 2 s upstream timeout


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_import_that_waited_for_its_twin_counts_no_suppressed_call(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = with_metrics(service_factory)
    garmin.add_user(EMAIL, "irrelevant-password")
    request = pb.ImportSessionRequest(
        user_id="sue", garminconnect_tokens=json.dumps(garmin.garminconnect_tokens(EMAIL))
    )
    answers: dict[str, object] = {}

    def send(name: str) -> None:
        try:
            answers[name] = replica.call("ImportSession", request).status.state
        except Exception as exc:  # noqa: BLE001 - reported below
            answers[name] = exc

    def twice() -> None:
        before = garmin.request_count(DI_TOKEN_PATH)
        garmin.fail_next(DI_TOKEN_PATH, None, delay=HOLD_SECONDS)  # the first call is slow
        first = threading.Thread(target=send, args=("first",))
        first.start()
        deadline = time.monotonic() + 10
        while garmin.request_count(DI_TOKEN_PATH) == before:
            assert time.monotonic() < deadline, "the first import never reached Garmin"
            time.sleep(0.01)
        send("second")  # while the first is with Garmin
        first.join(30)
        garmin.clear_faults()

    delta = moved(replica, twice)

    assert answers == {
        "first": pb.SESSION_STATE_ACTIVE,
        "second": pb.SESSION_STATE_ACTIVE,
    }, answers
    assert garmin.di_refresh_count(EMAIL) == 1
    suppressed = delta(
        "garmin_auth_garmin_calls_suppressed_total", endpoint="di_token", reason="in_flight"
    )
    # Neither call was answered GARMIN_RATE_LIMITED.
    assert suppressed == 0, (
        f"{suppressed:.0f} suppressed in_flight call(s) counted for two imports both answered OK"
    )
