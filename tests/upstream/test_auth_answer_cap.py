"""The service reads at most MAX_AUTH_ANSWER_BYTES (1 MiB, decoded) of a token-endpoint or SSO
answer (garmin_client.answer_cap; README, "What each Garmin answer leads to"), as the worker
reads at most 32 MiB of any Garmin answer (README, the worker's settings).

Before, the DI token endpoint's answer was read whole by requests, decompressed, then decoded
whole again to text (`response.text[:4096]`), and the SSO answers were read whole as well: one
refresh answered with about 128 KiB of gzip took 257 MiB at its peak, a few MiB of it would take
gigabytes, and an OOM-killed replica loses every rotation it holds unstored at that moment. An
answer past the cap is GARMIN_UNAVAILABLE (try later), read no further, and never asked again.
"""

from __future__ import annotations

import json
import logging
import tracemalloc
from collections.abc import Callable

import pytest

from auth_service.domain.errors import GarminCredentialsRejected, GarminUnavailable
from auth_service.domain.policies import IOS_SERVICE_URL
from garmin_client.answer_cap import MAX_AUTH_ANSWER_BYTES
from garmin_emulator import DI_TOKEN_PATH, LOGIN_PATH, EmulatedUser, GarminEmulator

from .conftest import PASSWORD
from .di_http import ticket_for
from .di_provider import di_upstream, issued_tokens

pytestmark = pytest.mark.timeout(120)

EMAIL = "bomb@example.com"
# About 128 KiB on the wire, gzip-compressed.
BOMB = b" " * (128 * 1024 * 1024)
# The cap and what reading up to it costs (about 1.4 MiB), with room for the emulator's own
# work (it runs in this process, and tracemalloc sees it too); before, a refresh took 257 MiB.
BOUND = 8 * 1024 * 1024


def refused_within_the_cap(call: Callable[[], object], what: str) -> None:
    """Run `call`, which must fail as Garmin unavailable, within BOUND of memory at its peak,
    refusing the answer as too large (read no further)."""
    tracemalloc.start()
    try:
        with pytest.raises(GarminUnavailable) as raised:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOUND, f"reading one {what} answer took {peak // (1024 * 1024)} MiB"
    assert "larger than 1 MiB, not read" in raised.value.message


def test_a_refresh_answer_is_read_within_the_cap(
    emulator: GarminEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.add_user(EMAIL, "pw-bomb-1")
    tokens = issued_tokens(emulator, EMAIL)
    upstream = di_upstream(emulator)
    emulator.fail_next(DI_TOKEN_PATH, 200, body=BOMB, gzip=True)

    with caplog.at_level(logging.WARNING):
        refused_within_the_cap(lambda: upstream.refresh(tokens), "refresh")

    # Never asked again: a repeated rotation would present a dead refresh token.
    assert emulator.request_count(DI_TOKEN_PATH) == 1
    # A 200 not read loses the rotation it carried: said loudly, with no secret.
    [lost] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "rotated to is lost" in lost.getMessage()
    assert tokens.oauth2.refresh_token not in caplog.text


def test_a_ticket_exchange_answer_is_read_within_the_cap(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    upstream = di_upstream(emulator)
    ticket = ticket_for(emulator, user.email, PASSWORD)
    emulator.fail_next(DI_TOKEN_PATH, 400, body=BOMB, gzip=True, content_type="text/plain")

    refused_within_the_cap(
        lambda: upstream.exchange_service_ticket(ticket, IOS_SERVICE_URL), "ticket"
    )

    assert emulator.request_count(DI_TOKEN_PATH) == 1


@pytest.mark.parametrize("plain_http", [False, True], ids=["curl_cffi", "requests"])
def test_a_sign_in_answer_is_read_within_the_cap(
    emulator: GarminEmulator, user: EmulatedUser, plain_http: bool
) -> None:
    upstream = di_upstream(emulator, plain_http=plain_http)
    emulator.fail_next(LOGIN_PATH, 200, body=BOMB, gzip=True, content_type="application/json")

    refused_within_the_cap(lambda: upstream.login(user.email, PASSWORD), "sign-in")

    assert emulator.request_count(LOGIN_PATH) == 1  # a login POST is never repeated


@pytest.mark.parametrize("plain_http", [False, True], ids=["curl_cffi", "requests"])
def test_an_answer_up_to_the_cap_is_read_and_one_byte_more_is_not(
    emulator: GarminEmulator, user: EmulatedUser, plain_http: bool
) -> None:
    """The cap refuses only what is past it: a refusal padded to the cap is still read."""
    upstream = di_upstream(emulator, plain_http=plain_http)
    refusal = json.dumps(
        {"responseStatus": {"type": "INVALID_USERNAME_PASSWORD", "httpStatus": "UNAUTHORIZED"}}
    ).encode()
    padded = refusal + b" " * (MAX_AUTH_ANSWER_BYTES - len(refusal))
    json_answer = {"gzip": True, "content_type": "application/json"}

    emulator.fail_next(LOGIN_PATH, 401, body=padded, **json_answer)  # type: ignore[arg-type]
    with pytest.raises(GarminCredentialsRejected):
        upstream.login(user.email, PASSWORD)

    emulator.fail_next(LOGIN_PATH, 401, body=padded + b" ", **json_answer)  # type: ignore[arg-type]
    with pytest.raises(GarminUnavailable, match="larger than 1 MiB"):
        upstream.login(user.email, PASSWORD)
