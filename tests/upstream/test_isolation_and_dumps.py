"""garth's environment, files, telemetry and global state never leak into the adapter; garth's
Client.dumps() strings convert both ways."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

# Real garth, to prove interop; conftest's adapter import already loaded it with GARTH_*
# hidden.
import garth
import pytest

from auth_service.domain.models import GarminTokens, LoginNeedsMfa
from auth_service.upstream.garth.dumps import tokens_from_garth_dumps, tokens_to_garth_dumps
from auth_service.upstream.garth.isolation import client_for_call
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.settings import UpstreamSettings
from garmin_emulator import EmulatedUser, GarminEmulator

from .conftest import PASSWORD, expired_everywhere, login_tokens

pytestmark = pytest.mark.timeout(60)


def test_garth_environment_does_not_affect_the_adapter(
    settings: UpstreamSettings,
    emulator: GarminEmulator,
    user: EmulatedUser,
    mfa_user: EmulatedUser,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    garth_home = tmp_path / "garth-home"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("GARTH_TOKEN", "garbage")
    monkeypatch.setenv("GARTH_HOME", str(garth_home))
    monkeypatch.setenv("GARTH_TELEMETRY_ENABLED", "true")
    monkeypatch.setenv("GARTH_TELEMETRY_SEND_TO_LOGFIRE", "true")
    upstream = GarthUpstream(settings)

    tokens = login_tokens(upstream, user)
    pending = upstream.login(mfa_user.email, PASSWORD)
    assert isinstance(pending, LoginNeedsMfa)
    upstream.resume_mfa(pending.pending, mfa_user.mfa_code)
    refreshed = upstream.refresh(tokens)
    upstream.validate(expired_everywhere(emulator, refreshed, user.email), allow_refresh=True)
    with client_for_call(settings, tokens.domain) as client:
        assert client.telemetry.enabled is False
        assert client.sess.hooks["response"] == []

    assert not garth_home.exists()
    assert list(workdir.iterdir()) == []
    assert "Garth session" not in capsys.readouterr().out


def test_import_hides_garth_environment_and_restores_it() -> None:
    # Both set makes garth's import-time global Client() raise: the import must not see them.
    code = (
        "import os, auth_service.upstream.garth.isolation, garth; "
        "print(os.environ['GARTH_HOME'], os.environ['GARTH_TOKEN'], "
        "os.environ['garth_telemetry_enabled'], garth.client.oauth1_token)"
    )
    env = {
        **os.environ,
        "GARTH_HOME": "/nonexistent",
        "GARTH_TOKEN": "garbage",
        "garth_telemetry_enabled": "true",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["/nonexistent", "garbage", "true", "None"]


def test_dumps_round_trip_through_a_real_garth_client(
    tokens: GarminTokens,
    upstream: GarthUpstream,
    mfa_user: EmulatedUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("GARTH_HOME", "GARTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    pending = upstream.login(mfa_user.email, PASSWORD)
    assert isinstance(pending, LoginNeedsMfa)
    mfa_tokens = upstream.resume_mfa(pending.pending, mfa_user.mfa_code)

    for original in (tokens, mfa_tokens):
        real = garth.Client()
        real.loads(tokens_to_garth_dumps(original))
        dumped = real.dumps()

        assert real.oauth2_token.access_token == original.oauth2.access_token  # type: ignore[union-attr]
        assert real.oauth2_token.expires_at == int(original.oauth2.expires_at.timestamp())  # type: ignore[union-attr]
        assert real.domain == original.domain
        assert tokens_from_garth_dumps(dumped) == original


def test_dumps_from_garth_with_a_naive_mfa_timestamp_is_utc() -> None:
    pair = [
        {
            "oauth_token": "t",
            "oauth_token_secret": "s",
            "mfa_token": "m",
            "mfa_expiration_timestamp": "2026-08-02T05:56:10",
            "domain": "garmin.cn",
        },
        {
            "scope": "CONNECT_READ",
            "jti": "j",
            "token_type": "Bearer",
            "access_token": "a",
            "refresh_token": "r",
            "expires_in": 3600,
            "expires_at": 1_800_000_000,
            "refresh_token_expires_in": 7200,
            "refresh_token_expires_at": 1_800_003_600,
        },
    ]

    tokens = tokens_from_garth_dumps(base64.b64encode(json.dumps(pair).encode()).decode())

    assert tokens.domain == "garmin.cn"
    mfa_expires_at = tokens.oauth1_token().mfa_expires_at
    assert mfa_expires_at is not None
    assert mfa_expires_at.isoformat() == "2026-08-02T05:56:10+00:00"
    assert tokens.oauth2.expires_at.timestamp() == 1_800_000_000


SECRET = "TOPSECRET-value-never-echoed"


def _b64(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


_GOOD_OAUTH1 = {"oauth_token": SECRET, "oauth_token_secret": SECRET}
_GOOD_OAUTH2 = {
    "scope": "s",
    "jti": "j",
    "token_type": "Bearer",
    "access_token": SECRET,
    "refresh_token": SECRET,
    "expires_in": 1,
    "expires_at": 1_800_000_000,
    "refresh_token_expires_in": 1,
    "refresh_token_expires_at": 1_800_000_000,
}


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "not base64 at all!",
        base64.b64encode(SECRET.encode()).decode(),
        base64.b64encode(b"\xff\xfe").decode(),
        _b64({"oauth1": SECRET}),
        _b64([_GOOD_OAUTH1]),
        _b64([_GOOD_OAUTH1, _GOOD_OAUTH2, {}]),
        _b64([SECRET, _GOOD_OAUTH2]),
        _b64([{"oauth_token": SECRET}, _GOOD_OAUTH2]),
        _b64([{**_GOOD_OAUTH1, "oauth_token": 12}, _GOOD_OAUTH2]),
        _b64([_GOOD_OAUTH1, {**_GOOD_OAUTH2, "expires_at": SECRET}]),
        _b64([_GOOD_OAUTH1, {k: v for k, v in _GOOD_OAUTH2.items() if k != "jti"}]),
        _b64([_GOOD_OAUTH1, {**_GOOD_OAUTH2, "expires_at": 10**20}]),
        _b64([{**_GOOD_OAUTH1, "oauth_token": ""}, _GOOD_OAUTH2]),
        # Before: accepted, and garth's https://connectapi.{domain} sent the session's
        # bearer token and our signed exchange to evil.example.
        _b64([{**_GOOD_OAUTH1, "domain": f"garmin.com@evil.example/{SECRET}"}, _GOOD_OAUTH2]),
        _b64([{**_GOOD_OAUTH1, "domain": "10.0.0.5:5432"}, _GOOD_OAUTH2]),
        # Before: accepted, though the `session` source and ReportRefreshed refuse them
        # (domain.validation.check_tokens), so the stored session could not be reported back.
        _b64([{**_GOOD_OAUTH1, "mfa_token": f"{SECRET}\x01"}, _GOOD_OAUTH2]),
        _b64([_GOOD_OAUTH1, {**_GOOD_OAUTH2, "scope": f"{SECRET}\x00"}]),
        _b64([_GOOD_OAUTH1, {**_GOOD_OAUTH2, "jti": SECRET * 300}]),
        _b64([_GOOD_OAUTH1, {**_GOOD_OAUTH2, "expires_at": 253402300799}]),
        _b64([{**_GOOD_OAUTH1, "mfa_expiration_timestamp": "1960-06-01T00:00:00"}, _GOOD_OAUTH2]),
    ],
)
def test_malformed_dumps_raise_value_error_without_secrets(malformed: str) -> None:
    with pytest.raises(ValueError, match=r"^garth session string: ") as caught:
        tokens_from_garth_dumps(malformed)

    assert SECRET not in str(caught.value)
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
