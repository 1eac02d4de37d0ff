"""README (Central refresh): callers waiting on another's refresh "give up ... half a second
before their RPC's deadline if that comes first (UNAVAILABLE GARMIN_UNAVAILABLE, not a
DEADLINE_EXCEEDED that says nothing of Garmin)"; ImportSession: "a second import of the
account meanwhile waits for it as long as a refresh waits on another replica's".

A second import of the account, or a second GetStatus(validate), waits for the call under way
with GarminGate.wait_for_call, which now gives up by the RPC's answer time too
(auth_service.domain.context.rpc_answer_by). Before, it never looked at the RPC's deadline:
the handler kept waiting (and then went on to Garmin) long after its caller got
DEADLINE_EXCEEDED. Found by a read-only review."""

from __future__ import annotations

import json
import threading
import time

import pytest

from auth_service.domain.context import rpc_deadline
from auth_service.domain.errors import DomainError
from garmin_client.endpoints import PROFILE_PATH
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.refresh import DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)

USER = "import-deadline"
EMAIL = f"{USER}@example.com"
HOLD_SECONDS = 1.8  # the first import's refresh at Garmin (under the 2 s upstream timeout)
RPC_SECONDS = 0.8  # the second import's RPC deadline


def test_a_second_import_gives_up_by_its_rpc_deadline(
    replicas: tuple[Replica, Replica], emulator: GarminEmulator
) -> None:
    emulator.add_user(EMAIL, "irrelevant-password")
    token_file = json.dumps(emulator.garminconnect_tokens(EMAIL))
    first: list[object] = []

    def first_import() -> None:
        try:
            first.append(replicas[0].imports.import_session(USER, garminconnect_tokens=token_file))
        except DomainError as exc:
            first.append(exc)

    before = emulator.request_count(DI_TOKEN_PATH)
    emulator.fail_next(DI_TOKEN_PATH, None, delay=HOLD_SECONDS)
    thread = threading.Thread(target=first_import)
    thread.start()
    arrival = time.monotonic() + 10
    while emulator.request_count(DI_TOKEN_PATH) == before:
        assert time.monotonic() < arrival, "the first import never reached Garmin"
        time.sleep(0.005)

    started = time.monotonic()
    token = rpc_deadline.set(started + RPC_SECONDS)
    try:
        try:
            answer: object = replicas[1].imports.import_session(
                USER, garminconnect_tokens=token_file
            )
        except DomainError as exc:
            answer = exc
    finally:
        rpc_deadline.reset(token)
    took = time.monotonic() - started
    thread.join(30)
    assert took <= RPC_SECONDS, (
        f"the second ImportSession answered {type(answer).__name__} {took:.2f}s after it "
        f"started, past its RPC deadline ({RPC_SECONDS}s): its caller had DEADLINE_EXCEEDED "
        "long before"
    )


VALIDATED = "validate-deadline"


def test_a_second_validation_gives_up_by_its_rpc_deadline(
    replicas: tuple[Replica, Replica], emulator: GarminEmulator, accounts: DiAccounts
) -> None:
    """GetStatus(validate) finding another validation of the account with Garmin waits for
    it with GarminGate.wait_for_call(probe_seconds: 60 s by default), not bounded by the
    RPC's deadline either."""
    accounts.seed(VALIDATED)
    first: list[object] = []

    def first_validation() -> None:
        try:
            first.append(replicas[0].sessions.get_status(VALIDATED, validate=True))
        except DomainError as exc:
            first.append(exc)

    before = emulator.request_count(PROFILE_PATH)
    emulator.fail_next(PROFILE_PATH, None, delay=HOLD_SECONDS)
    thread = threading.Thread(target=first_validation)
    thread.start()
    arrival = time.monotonic() + 10
    while emulator.request_count(PROFILE_PATH) == before:
        assert time.monotonic() < arrival, "the first validation never reached Garmin"
        time.sleep(0.005)

    started = time.monotonic()
    token = rpc_deadline.set(started + RPC_SECONDS)
    try:
        try:
            answer: object = replicas[1].sessions.get_status(VALIDATED, validate=True)
        except DomainError as exc:
            answer = exc
    finally:
        rpc_deadline.reset(token)
    took = time.monotonic() - started
    thread.join(30)
    assert took <= RPC_SECONDS, (
        f"the second GetStatus(validate) answered {type(answer).__name__} {took:.2f}s after it "
        f"started, past its RPC deadline ({RPC_SECONDS}s)"
    )
