"""GarminApiSession: the sync worker's authenticated Connect API calls."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime

# Real garth, to prove interop; conftest's adapter import already loaded it with GARTH_*
# hidden.
import garth
import pytest

from auth_service.domain.models import GarminTokens
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.api_session import GarminApiSession
from garmin_client.errors import RateLimited, SessionRejected, Unavailable
from garmin_client.settings import UpstreamSettings
from garmin_emulator import (
    ACTIVITIES_PATH,
    DOWNLOAD_PREFIX,
    EXCHANGE_PATH,
    PROFILE_PATH,
    EmulatedUser,
    GarminEmulator,
)

from .conftest import expired_everywhere, login_tokens

pytestmark = pytest.mark.timeout(30)


def test_activities_pages_newest_first(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    created = emulator.add_activities(user.email, 25)
    newest_first = [a["activityId"] for a in reversed(created)]

    with GarminApiSession(tokens, settings) as session:
        first = session.get_json(ACTIVITIES_PATH, {"start": 0, "limit": 20})
        second = session.get_json(ACTIVITIES_PATH, {"start": 20, "limit": 20})

    assert [a["activityId"] for a in first + second] == newest_first
    assert {"activityName", "startTimeGMT", "startTimeLocal", "activityType", "duration"} <= set(
        first[0]
    )
    assert session.refreshed is False
    assert session.current_tokens() is None


def test_download_returns_the_zip(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    [activity] = emulator.add_activities(user.email, 1)
    activity_id = activity["activityId"]

    with GarminApiSession(tokens, settings) as session:
        data = session.download(f"{DOWNLOAD_PREFIX}{activity_id}")

    assert data == emulator.activity_file(activity_id)
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == [f"{activity_id}_ACTIVITY.fit"]


def test_someone_elses_activity_is_not_found(
    settings: UpstreamSettings,
    emulator: GarminEmulator,
    user: EmulatedUser,
    other_user: EmulatedUser,
    tokens: GarminTokens,
) -> None:
    [theirs] = emulator.add_activities(other_user.email, 1)

    with (
        GarminApiSession(tokens, settings) as session,
        pytest.raises(Unavailable, match="404"),
    ):
        session.download(f"{DOWNLOAD_PREFIX}{theirs['activityId']}")


def test_expired_token_is_refreshed_during_the_session_and_reported(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    stale = expired_everywhere(emulator, tokens, user.email)

    with GarminApiSession(stale, settings) as session:
        profile = session.get_json(PROFILE_PATH)
        session.get_json(PROFILE_PATH)
        refreshed = session.current_tokens()

    assert profile["userName"] == user.email
    assert session.refreshed is True
    assert refreshed is not None
    assert refreshed.oauth1 == tokens.oauth1
    assert refreshed.oauth2.access_token != tokens.oauth2.access_token
    assert refreshed.oauth2.expires_at > datetime.now(UTC)
    assert emulator.exchange_count(user.email) == 2  # the login's and exactly one refresh
    assert [call.status for call in emulator.api_calls] == [200, 200]


def test_token_refused_early_is_refreshed_once_and_reported(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    emulator.expire_access_tokens(user.email)  # Garmin-side only: our clock says it is valid

    with GarminApiSession(tokens, settings) as session:
        session.get_json(PROFILE_PATH)

    assert [call.status for call in emulator.api_calls] == [401, 200]
    assert session.current_tokens() is not None


def test_failed_refresh_is_not_reported_and_keeps_the_oauth1(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    stale = expired_everywhere(emulator, tokens, user.email)
    emulator.fail_next(EXCHANGE_PATH, 429, retry_after=60)

    with GarminApiSession(stale, settings) as session:
        with pytest.raises(RateLimited) as caught:
            session.get_json(PROFILE_PATH)
        assert caught.value.retry_after_seconds == 60
        assert session.refreshed is False
        assert session.current_tokens() is None
        # garth would have dropped the OAuth1 token here; ours is intact, so it recovers.
        session.get_json(PROFILE_PATH)
        refreshed = session.current_tokens()

    assert refreshed is not None
    assert refreshed.oauth1 == tokens.oauth1


def test_tokens_are_never_reported_without_the_oauth1(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    stale = expired_everywhere(emulator, tokens, user.email)

    with GarminApiSession(stale, settings) as session:
        session.get_json(PROFILE_PATH)
        assert session.current_tokens() is not None
        # What garth's own Client.refresh_oauth2 does after a failed exchange.
        session._client.oauth1_token = None

        assert session.refreshed is False
        assert session.current_tokens() is None


def test_revoked_session_is_session_rejected(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    emulator.revoke_tokens(user.email)

    with GarminApiSession(tokens, settings) as session:
        with pytest.raises(SessionRejected):
            session.get_json(ACTIVITIES_PATH)
        assert session.current_tokens() is None


@pytest.mark.parametrize(
    ("fault", "body", "error"),
    [
        (429, None, RateLimited),
        (503, None, Unavailable),
        (200, "<html>maintenance</html>", Unavailable),
        (200, "[{", Unavailable),
        ("reset", None, Unavailable),
    ],
)
def test_api_failures_are_classified(
    settings: UpstreamSettings,
    emulator: GarminEmulator,
    tokens: GarminTokens,
    fault: int | str,
    body: str | None,
    error: type[Exception],
) -> None:
    emulator.fail_next(ACTIVITIES_PATH, fault, count=10, body=body)

    with GarminApiSession(tokens, settings) as session, pytest.raises(error):
        session.get_json(ACTIVITIES_PATH)


def test_only_paths_are_accepted(settings: UpstreamSettings, tokens: GarminTokens) -> None:
    with GarminApiSession(tokens, settings) as session:
        for bad in ("https://evil.example/steal", "//evil.example/x", "relative/path", "/a b"):
            with pytest.raises(ValueError, match="expected an absolute path"):
                session.get_json(bad)


@pytest.fixture
def polluted_garth_default() -> Iterator[dict[str, str]]:
    """garth's shared ``headers={}`` default, holding a token as a call without headers
    would have left it."""
    defaults = garth.Client.request.__defaults__
    assert defaults is not None
    shared = defaults[-1]
    assert isinstance(shared, dict)
    saved = dict(shared)
    shared.clear()
    shared["Authorization"] = "Bearer polluted-default"
    yield shared
    shared.clear()
    shared.update(saved)


def test_two_users_alternating_in_one_thread_never_share_a_token(
    settings: UpstreamSettings,
    upstream: GarthUpstream,
    emulator: GarminEmulator,
    user: EmulatedUser,
    other_user: EmulatedUser,
    polluted_garth_default: dict[str, str],
) -> None:
    mine = login_tokens(upstream, user)
    theirs = login_tokens(upstream, other_user)
    stale_theirs = expired_everywhere(emulator, theirs, other_user.email)
    expected: list[str] = []

    with GarminApiSession(mine, settings) as a, GarminApiSession(stale_theirs, settings) as b:
        for _ in range(3):
            assert a.get_json(PROFILE_PATH)["userName"] == user.email
            assert b.get_json(PROFILE_PATH)["userName"] == other_user.email
            upstream.validate(mine, allow_refresh=False)
            a.get_json(ACTIVITIES_PATH)
            expected += [user.email, other_user.email, user.email, user.email]

    calls = emulator.api_calls
    assert [call.token_owner for call in calls] == expected
    assert all(call.status == 200 for call in calls)
    assert all("polluted-default" not in (call.authorization or "") for call in calls)
    assert all(
        call.authorization == f"Bearer {mine.oauth2.access_token}"
        for call in calls
        if call.token_owner == user.email
    )
    # None of our calls used (and so wrote a token into) garth's shared default.
    assert polluted_garth_default == {"Authorization": "Bearer polluted-default"}


def test_a_401_later_in_the_session_tries_the_exchange_before_giving_up(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    stale = expired_everywhere(emulator, tokens, user.email)

    with GarminApiSession(stale, settings) as session:
        session.get_json(PROFILE_PATH)  # refreshes
        emulator.expire_access_tokens(user.email)  # Garmin drops the new token early
        session.get_json(PROFILE_PATH)  # 401, refresh again, retry
        emulator.revoke_tokens(user.email)
        with pytest.raises(SessionRejected):
            session.get_json(PROFILE_PATH)  # 401, exchange 401: dead

    assert [call.status for call in emulator.api_calls] == [200, 401, 200, 401]
    assert emulator.exchange_count(user.email) == 3
