"""refresh() and validate(): the session-judging calls, and the error classification that
decides whether a session dies."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from auth_service.domain.errors import (
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
)
from auth_service.domain.models import GarminTokens
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.answers import retry_after_seconds
from garmin_emulator import (
    EXCHANGE_PATH,
    PROFILE_PATH,
    EmulatedUser,
    GarminEmulator,
)

from .conftest import expired_everywhere, locally_expired, make_settings

pytestmark = pytest.mark.timeout(30)


# --- refresh -------------------------------------------------------------------------------


def test_refresh_of_an_expired_token_keeps_the_oauth1(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    stale = expired_everywhere(emulator, tokens, user.email)

    fresh = upstream.refresh(stale)

    assert fresh.oauth1 == tokens.oauth1
    assert fresh.domain == tokens.domain
    assert fresh.oauth2.access_token != tokens.oauth2.access_token
    assert fresh.oauth2.expires_at > datetime.now(UTC)
    assert emulator.exchange_count(user.email) == 2
    upstream.validate(fresh, allow_refresh=False)


def test_refresh_of_an_mfa_session_sends_its_mfa_token(
    upstream: GarthUpstream, emulator: GarminEmulator, mfa_user: EmulatedUser
) -> None:
    result = upstream.login(mfa_user.email, mfa_user.password)
    tokens = upstream.resume_mfa(result.pending, mfa_user.mfa_code)  # type: ignore[union-attr]

    fresh = upstream.refresh(tokens)

    assert fresh.oauth1 == tokens.oauth1
    assert emulator.exchange_count(mfa_user.email) == 2


def test_refresh_of_a_revoked_session_is_session_rejected(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    emulator.revoke_tokens(user.email)

    with pytest.raises(GarminSessionRejected) as caught:
        upstream.refresh(tokens)

    assert tokens.oauth1_token().oauth_token not in caught.value.message
    assert tokens.oauth1_token().oauth_token_secret not in caught.value.message


def test_refresh_signed_with_the_wrong_consumer_secret_is_unavailable(
    emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    upstream = GarthUpstream(make_settings(emulator, consumer_secret="wrong-consumer-secret"))

    # Garmin answers 401, as to a dead session; but no exchange signed with this consumer
    # ever succeeded, so it is taken as a refusal of our consumer (tests/upstream/
    # test_exchange_refusals.py), not of the session.
    with pytest.raises(GarminUnavailable):
        upstream.refresh(tokens)
    assert emulator.signature_failures == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("120", 120.0), ("http-date", 90.0)],
)
def test_429_is_rate_limited_with_retry_after_and_never_sleeps(
    upstream: GarthUpstream,
    emulator: GarminEmulator,
    tokens: GarminTokens,
    header: str | None,
    expected: float | None,
) -> None:
    if header == "http-date":
        header = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    emulator.fail_next(EXCHANGE_PATH, 429, retry_after=header)
    emulator.fail_next(PROFILE_PATH, 429, retry_after=header)
    started = time.monotonic()

    with pytest.raises(GarminRateLimited) as on_exchange:
        upstream.refresh(tokens)
    with pytest.raises(GarminRateLimited) as on_api:
        upstream.validate(tokens, allow_refresh=True)

    assert time.monotonic() - started < 1.0
    for caught in (on_exchange, on_api):
        if expected is None:
            assert caught.value.retry_after_seconds is None
        else:
            assert caught.value.retry_after_seconds == pytest.approx(expected, abs=2)
    # A 429 is never retried, even on a GET.
    assert emulator.request_count(PROFILE_PATH) == 1


@pytest.mark.parametrize(
    ("fault", "body"),
    [
        (500, None),
        (503, None),
        (502, "<html><body>Bad gateway</body></html>"),
        (200, "<!DOCTYPE html><html>Cloudflare</html>"),
        (200, '{"access_token": "abc", '),
        (200, '{"access_token": "abc"}'),
        (200, '["not", "a", "token"]'),
        (404, None),
        (403, None),
        ("reset", None),
    ],
)
def test_exchange_failures_are_unavailable_and_the_post_is_not_retried(
    upstream: GarthUpstream,
    emulator: GarminEmulator,
    tokens: GarminTokens,
    fault: int | str,
    body: str | None,
) -> None:
    emulator.fail_next(EXCHANGE_PATH, fault, count=5, body=body)

    with pytest.raises(GarminUnavailable):
        upstream.refresh(tokens)
    assert emulator.request_count(EXCHANGE_PATH) == 2  # the login's + this one, never resent


def test_exchange_timeout_is_unavailable_quickly(
    emulator: GarminEmulator, tokens: GarminTokens
) -> None:
    upstream = GarthUpstream(make_settings(emulator, timeout_seconds=0.5, retries=2))
    emulator.fail_next(EXCHANGE_PATH, "hang", delay=5)
    started = time.monotonic()

    with pytest.raises(GarminUnavailable, match="in time"):
        upstream.refresh(tokens)
    assert time.monotonic() - started < 2.0


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("5", now) == 5.0
    assert retry_after_seconds(" 2.5 ", now) == 2.5
    assert retry_after_seconds("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60.0
    assert retry_after_seconds("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0.0
    for junk in (None, "", "-3", "nan", "inf", "soon", "Thu, 99 Foo 2026"):
        assert retry_after_seconds(junk, now) is None


# --- validate -----------------------------------------------------------------------------


def test_validate_a_good_session_returns_the_same_tokens(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    assert upstream.validate(tokens, allow_refresh=True) is tokens
    assert upstream.validate(tokens, allow_refresh=False) is tokens
    assert emulator.exchange_count(user.email) == 1
    assert [call.token_owner for call in emulator.api_calls] == [user.email, user.email]


def test_validate_an_expired_session_refreshes_when_allowed(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    stale = expired_everywhere(emulator, tokens, user.email)

    current = upstream.validate(stale, allow_refresh=True)

    assert current is not stale
    assert current.oauth1 == tokens.oauth1
    assert current.oauth2.expires_at > datetime.now(UTC)
    assert emulator.api_calls[-1].authorization == f"Bearer {current.oauth2.access_token}"
    assert emulator.api_calls[-1].status == 200


def test_validate_never_refreshes_when_not_allowed(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    stale = expired_everywhere(emulator, tokens, user.email)

    with pytest.raises(GarminSessionRejected):
        upstream.validate(stale, allow_refresh=False)
    assert emulator.exchange_count(user.email) == 1


def test_validate_refreshes_once_when_garmin_refuses_an_unexpired_token(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    # Garmin dropped the access token early (our clock says it is fine): the OAuth1 still
    # works, so the session is not dead.
    emulator.expire_access_tokens(user.email)

    current = upstream.validate(tokens, allow_refresh=True)

    assert current is not tokens
    assert [call.status for call in emulator.api_calls] == [401, 200]


def test_validate_a_revoked_session_is_session_rejected(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    emulator.revoke_tokens(user.email)

    with pytest.raises(GarminSessionRejected):
        upstream.validate(tokens, allow_refresh=True)
    with pytest.raises(GarminSessionRejected):
        upstream.validate(tokens, allow_refresh=False)
    with pytest.raises(GarminSessionRejected):
        upstream.validate(locally_expired(tokens), allow_refresh=True)


def test_validate_retries_a_get_on_503_a_bounded_number_of_times(
    upstream: GarthUpstream, emulator: GarminEmulator, tokens: GarminTokens
) -> None:
    emulator.fail_next(PROFILE_PATH, 503, count=10)

    with pytest.raises(GarminUnavailable, match="503"):
        upstream.validate(tokens, allow_refresh=True)
    assert emulator.request_count(PROFILE_PATH) == 3  # settings.retries == 2


def test_validate_survives_one_transient_failure(
    upstream: GarthUpstream, emulator: GarminEmulator, tokens: GarminTokens
) -> None:
    emulator.fail_next(PROFILE_PATH, 502)
    emulator.fail_next(PROFILE_PATH, "reset")

    assert upstream.validate(tokens, allow_refresh=False) is tokens
    assert emulator.request_count(PROFILE_PATH) == 3


@pytest.mark.parametrize(
    ("fault", "body"),
    [
        (200, "<html><title>Garmin Connect</title></html>"),
        (200, "{malformed"),
        (200, '"a string"'),
        (500, None),
        ("reset", None),
    ],
)
def test_validate_unreadable_or_failing_answers_are_unavailable(
    emulator: GarminEmulator, tokens: GarminTokens, fault: int | str, body: str | None
) -> None:
    upstream = GarthUpstream(make_settings(emulator, retries=0))
    emulator.fail_next(PROFILE_PATH, fault, body=body)

    with pytest.raises(GarminUnavailable):
        upstream.validate(tokens, allow_refresh=True)


def test_validate_timeout_is_unavailable(emulator: GarminEmulator, tokens: GarminTokens) -> None:
    upstream = GarthUpstream(make_settings(emulator, timeout_seconds=0.5, retries=0))
    emulator.latency_seconds = 1.5
    started = time.monotonic()

    with pytest.raises(GarminUnavailable, match="in time"):
        upstream.validate(tokens, allow_refresh=False)
    assert time.monotonic() - started < 1.5
