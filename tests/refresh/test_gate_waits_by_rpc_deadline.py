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
from collections.abc import Callable

import pytest

from auth_service.domain.context import rpc_deadline
from auth_service.domain.errors import DomainError, GarminRateLimited
from garmin_client.endpoints import PROFILE_PATH
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.refresh import DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)

USER = "import-deadline"
EMAIL = f"{USER}@example.com"
HOLD_SECONDS = 1.8  # the first import's refresh at Garmin (under the 2 s upstream timeout)
RPC_SECONDS = 0.8  # the second import's RPC deadline


def _second_while_first_at_garmin(
    emulator: GarminEmulator, path: str, call: Callable[[], object]
) -> tuple[object, float]:
    """Start `call` on one replica, held at Garmin's `path` for HOLD_SECONDS; once it is there,
    make the same call under an RPC deadline of RPC_SECONDS: its answer and how long it took."""
    first: list[object] = []

    def first_call() -> None:
        try:
            first.append(call())
        except DomainError as exc:
            first.append(exc)

    before = emulator.request_count(path)
    emulator.fail_next(path, None, delay=HOLD_SECONDS)
    thread = threading.Thread(target=first_call)
    thread.start()
    arrival = time.monotonic() + 10
    while emulator.request_count(path) == before:
        assert time.monotonic() < arrival, "the first call never reached Garmin"
        time.sleep(0.005)

    started = time.monotonic()
    token = rpc_deadline.set(started + RPC_SECONDS)
    try:
        try:
            answer = call()
        except DomainError as exc:
            answer = exc
    finally:
        rpc_deadline.reset(token)
    took = time.monotonic() - started
    thread.join(30)
    return answer, took


def test_a_second_import_gives_up_by_its_rpc_deadline(
    replicas: tuple[Replica, Replica], emulator: GarminEmulator
) -> None:
    emulator.add_user(EMAIL, "irrelevant-password")
    token_file = json.dumps(emulator.garminconnect_tokens(EMAIL))
    answers = iter(replicas)

    answer, took = _second_while_first_at_garmin(
        emulator,
        DI_TOKEN_PATH,
        lambda: next(answers).imports.import_session(USER, garminconnect_tokens=token_file),
    )
    assert took <= RPC_SECONDS, (
        f"the second ImportSession answered {type(answer).__name__} {took:.2f}s after it "
        f"started, past its RPC deadline ({RPC_SECONDS}s): its caller had DEADLINE_EXCEEDED "
        "long before"
    )
    # The in-flight refusal: try again shortly.
    assert isinstance(answer, GarminRateLimited), answer


VALIDATED = "validate-deadline"


def test_a_second_validation_gives_up_by_its_rpc_deadline(
    replicas: tuple[Replica, Replica], emulator: GarminEmulator, accounts: DiAccounts
) -> None:
    """GetStatus(validate) finding another validation of the account with Garmin waits for
    it with GarminGate.wait_for_call (probe_seconds: 60 s by default), bounded by the RPC's
    deadline too."""
    accounts.seed(VALIDATED)
    answers = iter(replicas)

    answer, took = _second_while_first_at_garmin(
        emulator,
        PROFILE_PATH,
        lambda: next(answers).sessions.get_status(VALIDATED, validate=True),
    )
    assert took <= RPC_SECONDS, (
        f"the second GetStatus(validate) answered {type(answer).__name__} {took:.2f}s after it "
        f"started, past its RPC deadline ({RPC_SECONDS}s)"
    )
    assert isinstance(answer, GarminRateLimited), answer
