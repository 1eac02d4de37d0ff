"""ConnectApi: the sync worker's Connect API calls with an access token only."""

from __future__ import annotations

import contextlib
import io
import zipfile

import pytest

from auth_service.domain.models import GarminTokens
from garmin_client.connect_api import ConnectApi
from garmin_client.errors import (
    AccessTokenRejected,
    GarminError,
    NotFound,
    RateLimited,
    Unavailable,
)
from garmin_client.settings import UpstreamSettings
from garmin_emulator import (
    ACTIVITIES_PATH,
    DOWNLOAD_PREFIX,
    PROFILE_PATH,
    EmulatedUser,
    GarminEmulator,
)

from .conftest import make_settings

pytestmark = pytest.mark.timeout(30)


def test_activities_page_newest_first_with_the_bearer_alone(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    created = emulator.add_activities(user.email, 25)
    newest_first = [a["activityId"] for a in reversed(created)]
    token = tokens.oauth2.access_token

    with ConnectApi(settings, tokens.domain) as api:
        first = api.get_json(ACTIVITIES_PATH, token, {"start": 0, "limit": 20})
        second = api.get_json(ACTIVITIES_PATH, token, {"start": 20, "limit": 20})

    assert [a["activityId"] for a in first + second] == newest_first
    assert {"activityName", "startTimeGMT", "activityType"} <= set(first[0])
    calls = emulator.api_calls
    assert all(call.authorization == f"Bearer {token}" for call in calls)
    assert all(call.token_owner == user.email for call in calls)


def test_download_returns_the_zip(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    [activity] = emulator.add_activities(user.email, 1)
    activity_id = activity["activityId"]

    with ConnectApi(settings, tokens.domain) as api:
        data = api.download(f"{DOWNLOAD_PREFIX}{activity_id}", tokens.oauth2.access_token)

    assert data == emulator.activity_file(activity_id)
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == [f"{activity_id}_ACTIVITY.fit"]


def test_someone_elses_activity_is_not_found(
    settings: UpstreamSettings,
    emulator: GarminEmulator,
    other_user: EmulatedUser,
    tokens: GarminTokens,
) -> None:
    [theirs] = emulator.add_activities(other_user.email, 1)

    with ConnectApi(settings, tokens.domain) as api, pytest.raises(NotFound, match="404"):
        api.download(f"{DOWNLOAD_PREFIX}{theirs['activityId']}", tokens.oauth2.access_token)


@pytest.mark.parametrize("garmin_side", ["expired", "revoked"])
def test_a_refused_token_is_access_token_rejected_and_never_refreshed(
    settings: UpstreamSettings,
    emulator: GarminEmulator,
    user: EmulatedUser,
    tokens: GarminTokens,
    garmin_side: str,
) -> None:
    if garmin_side == "expired":
        emulator.expire_access_tokens(user.email)
    else:
        emulator.revoke_tokens(user.email)
    exchanges = emulator.exchange_count(user.email)

    with ConnectApi(settings, tokens.domain) as api, pytest.raises(AccessTokenRejected) as raised:
        api.get_json(PROFILE_PATH, tokens.oauth2.access_token)

    assert tokens.oauth2.access_token not in str(raised.value)
    # Nothing but the holder's RefreshLease may get a new token: no exchange from here.
    assert emulator.exchange_count(user.email) == exchanges


@pytest.mark.parametrize(
    ("fault", "body", "error"),
    [
        (429, None, RateLimited),
        (503, None, Unavailable),
        # A redirect is not followed, and its body is not taken for the page.
        (302, None, Unavailable),
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

    with ConnectApi(settings, tokens.domain) as api, pytest.raises(error):
        api.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token)


def test_only_paths_and_garmin_domains_are_accepted(
    settings: UpstreamSettings, tokens: GarminTokens
) -> None:
    with ConnectApi(settings, tokens.domain) as api:
        for bad in ("https://evil.example/steal", "//evil.example/x", "relative/path", "/a b"):
            with pytest.raises(ValueError, match="expected an absolute path"):
                api.get_json(bad, tokens.oauth2.access_token)
    with pytest.raises(ValueError, match="domain"):
        ConnectApi(settings, "evil.example")


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append((endpoint, outcome))


@pytest.mark.parametrize(
    ("fault", "outcome"), [(None, "2xx"), (429, "429"), (404, "4xx"), ("reset", "error")]
)
def test_the_observer_sees_each_call_once_with_its_outcome(
    emulator: GarminEmulator, tokens: GarminTokens, fault: int | str | None, outcome: str
) -> None:
    if fault is not None:
        emulator.fail_next(ACTIVITIES_PATH, fault, count=10)
    recorder = _Recorder()
    settings = make_settings(emulator, retries=0)

    with ConnectApi(settings, tokens.domain, recorder) as api, contextlib.suppress(GarminError):
        api.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token)

    assert recorder.calls == [(ACTIVITIES_PATH, outcome)]


def test_a_hanging_call_is_observed_as_a_timeout(
    emulator: GarminEmulator, tokens: GarminTokens
) -> None:
    emulator.fail_next(ACTIVITIES_PATH, "hang", count=10, delay=3)
    recorder = _Recorder()
    settings = make_settings(emulator, retries=0, timeout_seconds=0.3)

    with ConnectApi(settings, tokens.domain, recorder) as api, pytest.raises(Unavailable):
        api.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token)

    assert recorder.calls == [(ACTIVITIES_PATH, "timeout")]
