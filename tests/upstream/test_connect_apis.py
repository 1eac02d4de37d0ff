"""A sync thread's Connect API clients (sync_worker.connect_apis): one per Garmin domain, kept
from one user to the next, with nothing of one user's (cookies) in the next one's requests."""

from __future__ import annotations

import pytest
from requests.cookies import create_cookie

from auth_service.domain.models import GarminTokens
from garmin_client.settings import UpstreamSettings
from garmin_emulator import ACTIVITIES_PATH, EmulatedUser, GarminEmulator
from sync_worker.connect_apis import ConnectApis

pytestmark = pytest.mark.timeout(30)


def test_one_client_per_domain_is_kept_and_cookies_do_not_pass_to_the_next_user(
    settings: UpstreamSettings, emulator: GarminEmulator, user: EmulatedUser, tokens: GarminTokens
) -> None:
    emulator.add_activities(user.email, 2)
    token = tokens.oauth2.access_token
    apis = ConnectApis(settings)
    try:
        first = apis.for_user(tokens.domain)
        assert len(first.get_json(ACTIVITIES_PATH, token, {"start": 0, "limit": 5})) == 2
        # What a Set-Cookie from Garmin during the first user's sync leaves in the client.
        first.cookies.set_cookie(
            create_cookie("__cf_bm", "first-user", domain=f"connectapi.{tokens.domain}")
        )
        assert len(first.get_json(ACTIVITIES_PATH, token, {"start": 0, "limit": 5})) == 2
        second = apis.for_user(tokens.domain)
        assert second is first
        assert len(first.cookies) == 0
        assert len(second.get_json(ACTIVITIES_PATH, token, {"start": 0, "limit": 5})) == 2
    finally:
        apis.close()
    calls = emulator.api_calls
    assert [call.authorization for call in calls] == [f"Bearer {token}"] * 3
    # The first user's later request carried its cookie; the next user's did not.
    assert [dict(call.cookies) for call in calls] == [{}, {"__cf_bm": "first-user"}, {}]
