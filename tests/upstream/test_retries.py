"""The one retry layer (garmin_client.retry), counted at the emulator: how many HTTP requests
and how much time one failing call costs."""

from __future__ import annotations

import time

import pytest

from auth_service.domain.errors import GarminUnavailable
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.connect_api import ConnectApi
from garmin_client.errors import RateLimited, Unavailable
from garmin_client.tokens import GarminTokens
from garmin_emulator import ACTIVITIES_PATH, EXCHANGE_PATH, GarminEmulator

from .conftest import make_settings

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("retries", [0, 2])
def test_one_failing_get_makes_retries_plus_one_requests(
    emulator: GarminEmulator, tokens: GarminTokens, retries: int
) -> None:
    emulator.fail_next(ACTIVITIES_PATH, 503, count=100)

    settings = make_settings(emulator, retries=retries)
    with ConnectApi(settings, tokens.domain) as session, pytest.raises(Unavailable, match="503"):
        session.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token)

    assert emulator.request_count(ACTIVITIES_PATH) == retries + 1


@pytest.mark.parametrize(("status", "sent"), [(520, 3), (522, 3), (524, 3), (501, 1), (505, 1)])
def test_which_5xx_answers_to_a_get_are_retried(
    emulator: GarminEmulator, tokens: GarminTokens, status: int, sent: int
) -> None:
    """Cloudflare's 520-524 (its edge lost Garmin, or waited for it in vain) are passing
    failures, like 502-504; 501 and 505 say the request itself will never work. Before,
    only 408, 500 and 502-504 were retried, and a 522 ended the call at once."""
    emulator.fail_next(ACTIVITIES_PATH, status, count=100)

    settings = make_settings(emulator, retries=2)
    with ConnectApi(settings, tokens.domain) as session, pytest.raises(Unavailable):
        session.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token)

    assert emulator.request_count(ACTIVITIES_PATH) == sent


def test_a_hanging_get_is_bounded_in_attempts_and_time(
    emulator: GarminEmulator, tokens: GarminTokens
) -> None:
    timeout, retries = 0.4, 2
    emulator.fail_next(ACTIVITIES_PATH, "hang", count=100, delay=5)
    started = time.monotonic()

    settings = make_settings(emulator, timeout_seconds=timeout, retries=retries)
    late = pytest.raises(Unavailable, match="did not answer in time")
    with ConnectApi(settings, tokens.domain) as session, late:
        session.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token)

    # (retries + 1) * timeout, backoff included, plus the time it takes to notice.
    assert time.monotonic() - started < timeout * (retries + 1) + 0.5
    assert 1 <= emulator.request_count(ACTIVITIES_PATH) <= retries + 1


def test_a_429_is_never_repeated(emulator: GarminEmulator, tokens: GarminTokens) -> None:
    emulator.fail_next(ACTIVITIES_PATH, 429, count=100, retry_after=7)

    settings = make_settings(emulator, retries=2)
    with ConnectApi(settings, tokens.domain) as session, pytest.raises(RateLimited) as caught:
        session.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token)

    assert caught.value.retry_after_seconds == 7
    assert emulator.request_count(ACTIVITIES_PATH) == 1


@pytest.mark.parametrize("fault", [503, "reset"])
def test_a_post_that_may_have_reached_garmin_is_never_repeated(
    emulator: GarminEmulator, tokens: GarminTokens, fault: int | str
) -> None:
    upstream = GarthUpstream(make_settings(emulator, retries=2))
    before = emulator.request_count(EXCHANGE_PATH)
    emulator.fail_next(EXCHANGE_PATH, fault, count=100)

    with pytest.raises(GarminUnavailable):
        upstream.refresh(tokens)

    assert emulator.request_count(EXCHANGE_PATH) == before + 1


def test_an_answer_nested_deeper_than_the_stack_is_unreadable_not_a_crash(
    emulator: GarminEmulator, tokens: GarminTokens
) -> None:
    """json.loads raises RecursionError past about 1000 levels: before, it escaped get_json
    (the worker's user FAILED with a traceback on every run); now it is an answer we cannot
    read, like any other (Unavailable)."""
    emulator.fail_next(
        ACTIVITIES_PATH, 200, body="[" * 100_000 + "]" * 100_000, content_type="application/json"
    )

    settings = make_settings(emulator, retries=0)
    with (
        ConnectApi(settings, tokens.domain) as session,
        pytest.raises(Unavailable, match="unreadable"),
    ):
        session.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token)
