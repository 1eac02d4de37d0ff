"""The refresh and keep-alive settings: defaults, bounds, and the claim sized from the
upstream timeout (a claim must outlive one Garmin call)."""

from __future__ import annotations

from pathlib import Path

import pytest

from auth_service.config import load_settings
from garmin_client.env import ConfigError
from tests.service.test_cli import base_env


def test_defaults(tmp_path: Path) -> None:
    refresh = load_settings(base_env(tmp_path)).refresh
    assert refresh.concurrency == 4
    assert refresh.keepalive_interval_seconds == 300
    assert refresh.keepalive_window_seconds == 604800
    assert refresh.garth_refusal_grace_seconds == 7 * 86400
    # UPSTREAM_TIMEOUT 10 s x (2 retries + 1) + 30 s margin; a waiter waits a little longer.
    assert refresh.claim_seconds == 60
    assert refresh.wait_seconds > refresh.claim_seconds


def test_the_mfa_claim_outlasts_a_submit_mfa_with_garmin(tmp_path: Path) -> None:
    """A SubmitMfa sends the code, then exchanges the ticket (DI: one try per client id;
    garth: the embed page, the OAuth1 and OAuth2 exchanges): its challenge stays claimed as
    long as the longer flow's calls at their worst, never under two minutes."""
    # 10 s x (2 retries + 1) per call; DI with the four known ids: 1 + 4 calls; + 30 s.
    assert load_settings(base_env(tmp_path)).login.mfa_claim_seconds == 30 * 5 + 30
    slow = base_env(tmp_path, GARMIN_AUTH_UPSTREAM_TIMEOUT="300", GARMIN_AUTH_UPSTREAM_RETRIES="0")
    assert load_settings(slow).login.mfa_claim_seconds == 300 * 5 + 30
    # One client id: garth's four calls are the longer flow.
    one_id = base_env(
        tmp_path,
        GARMIN_AUTH_UPSTREAM_TIMEOUT="100",
        GARMIN_AUTH_UPSTREAM_RETRIES="0",
        GARMIN_AUTH_DI_CLIENT_IDS="GARMIN_CONNECT_MOBILE_IOS_DI",
    )
    assert load_settings(one_id).login.mfa_claim_seconds == 100 * 4 + 30
    quick = base_env(
        tmp_path,
        GARMIN_AUTH_UPSTREAM_TIMEOUT="1",
        GARMIN_AUTH_UPSTREAM_RETRIES="0",
        GARMIN_AUTH_DI_CLIENT_IDS="GARMIN_CONNECT_MOBILE_IOS_DI",
    )
    assert load_settings(quick).login.mfa_claim_seconds == 120


def test_values_from_the_environment(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        GARMIN_AUTH_REFRESH_CONCURRENCY="8",
        GARMIN_AUTH_KEEPALIVE_INTERVAL="60",
        GARMIN_AUTH_KEEPALIVE_WINDOW="86400",
        GARMIN_AUTH_UPSTREAM_TIMEOUT="5",
        GARMIN_AUTH_UPSTREAM_RETRIES="0",
        GARMIN_AUTH_GARTH_REFUSAL_GRACE="86400",
    )
    refresh = load_settings(env).refresh
    assert (refresh.concurrency, refresh.keepalive_interval_seconds) == (8, 60)
    assert refresh.garth_refusal_grace_seconds == 86400
    assert refresh.keepalive_window_seconds == 86400
    assert refresh.claim_seconds == 35


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REFRESH_CONCURRENCY", "0"),
        ("REFRESH_CONCURRENCY", "many"),
        ("KEEPALIVE_INTERVAL", "0"),
        # A refresh token dies about 30 days after its last use: a wider window is a typo.
        ("KEEPALIVE_WINDOW", str(30 * 86400)),
        ("DI_REFRESH_EXPIRY_ON_ROTATION", "sometimes"),
        ("GARTH_REFUSAL_GRACE", "-1"),
        ("GARTH_REFUSAL_GRACE", "a week"),
        # Past an OAuth1 token's whole life (about a year): a typo.
        ("GARTH_REFUSAL_GRACE", str(366 * 86400)),
        ("GARTH_REFUSAL_GRACE", "nan"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"GARMIN_AUTH_{name}"):
        load_settings(base_env(tmp_path, **{f"GARMIN_AUTH_{name}": value}))


def test_whether_a_rotation_restarts_the_refresh_expiry_is_configured(tmp_path: Path) -> None:
    assert load_settings(base_env(tmp_path)).di.rotation_restarts_refresh_expiry
    env = base_env(tmp_path, GARMIN_AUTH_DI_REFRESH_EXPIRY_ON_ROTATION="keep")
    assert not load_settings(env).di.rotation_restarts_refresh_expiry


def test_zero_garth_refusal_grace_is_allowed(tmp_path: Path) -> None:
    env = base_env(tmp_path, GARMIN_AUTH_GARTH_REFUSAL_GRACE="0")
    assert load_settings(env).refresh.garth_refusal_grace_seconds == 0
