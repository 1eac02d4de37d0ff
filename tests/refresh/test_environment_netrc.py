"""The service's environment changes nothing in what is sent to Garmin: a netrc file neither.

requests applies the netrc entry of a request's host (or its `default` entry) as HTTP Basic
to every request without an auth of its own, which replaces the Authorization header we set.
Before, with NETRC set: the garth provider's validate sent Basic instead of the bearer token,
Garmin answered 401 to a good token, and validate(allow_refresh=False) reported the session
dead (a definite rejection: the service invalidates it); the DI token endpoint's refresh sent
the netrc credentials instead of its client id. Sessions now come from
garmin_client.http_session, which reads no netrc (proxies and CA bundles still from the
environment).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auth_service.domain.models import LoginSucceeded
from auth_service.domain.policies import IOS_SERVICE_URL, DiSettings
from auth_service.upstream.di.provider import DiUpstream
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings
from garmin_emulator import GarminEmulator
from tests.refresh.conftest import CONSUMER_KEY, CONSUMER_SECRET

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct horse battery staple"


def test_a_netrc_in_the_environment_does_not_kill_a_good_session(
    emulator: GarminEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = GarthUpstream(
        UpstreamSettings(
            consumer_key=CONSUMER_KEY,
            consumer_secret=CONSUMER_SECRET,
            base_url=emulator.url,
            timeout_seconds=5,
            retries=0,
        )
    )
    user = emulator.add_user("netrc@example.com", PASSWORD)
    result = upstream.login(user.email, PASSWORD)
    assert isinstance(result, LoginSucceeded)
    tokens = result.tokens
    assert upstream.validate(tokens, allow_refresh=False) is tokens

    netrc = tmp_path / "netrc"
    netrc.write_text("default login ops password unrelated-netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    # Before: GarminSessionRejected("Garmin refused the session (HTTP 401 on the Connect API)").
    assert upstream.validate(tokens, allow_refresh=False) is tokens


def test_a_netrc_in_the_environment_does_not_replace_the_di_client_id(
    emulator: GarminEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = UpstreamSettings(
        consumer_key=CONSUMER_KEY,
        consumer_secret=CONSUMER_SECRET,
        base_url=emulator.url,
        timeout_seconds=5,
        retries=0,
    )
    di = DiUpstream(settings, DiSettings(plain_http=True))
    emulator.add_user("netrc-di@example.com", PASSWORD)
    tokens = di.exchange_service_ticket(
        emulator.issue_ticket("netrc-di@example.com"), IOS_SERVICE_URL
    )
    netrc = tmp_path / "netrc"
    netrc.write_text("default login ops password unrelated-netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    refreshed = di.refresh(tokens)
    assert refreshed.oauth2.refresh_token != tokens.oauth2.refresh_token
    assert di.validate(refreshed, allow_refresh=False) is refreshed
