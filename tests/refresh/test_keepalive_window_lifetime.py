"""A keep-alive window as long as the assumed refresh-token lifetime is refused at start.

GARMIN_AUTH_DI_REFRESH_LIFETIME is how long a DI refresh token is assumed to live when Garmin
stated no lifetime for the session. With GARMIN_AUTH_KEEPALIVE_WINDOW at or above it, such a
session is inside the window from the moment it is refreshed: the window selects nothing,
and keep-alive refreshes each of them every half of its lifetime (policies.
keepalive_not_before) rather than once as the token nears its end. The window's own cap (29
days, under the default 30-day lifetime) already said so for the default lifetime only.
Before, any pair loaded: DI_REFRESH_LIFETIME=86400 with the default 7-day window started,
and check-config said every setting parses (3 failures, found by review).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auth_service.checks import run_checks
from auth_service.config import load_settings
from garmin_client.env import ConfigError
from tests.service.test_cli import base_env, run_cli

DAY = "86400"


@pytest.mark.parametrize(
    "window", [None, DAY], ids=["default-window-above-the-lifetime", "window-equal"]
)
def test_a_window_not_shorter_than_the_lifetime_is_refused(
    tmp_path: Path, window: str | None
) -> None:
    overrides = {"GARMIN_AUTH_DI_REFRESH_LIFETIME": DAY}
    if window is not None:
        overrides["GARMIN_AUTH_KEEPALIVE_WINDOW"] = window
    with pytest.raises(ConfigError) as refused:
        load_settings(base_env(tmp_path, **overrides))
    assert refused.value.variable == "GARMIN_AUTH_KEEPALIVE_WINDOW"
    assert "GARMIN_AUTH_DI_REFRESH_LIFETIME (86400 s)" in str(refused.value)


def test_a_window_shorter_than_the_lifetime_loads(tmp_path: Path) -> None:
    env = base_env(
        tmp_path, GARMIN_AUTH_DI_REFRESH_LIFETIME=DAY, GARMIN_AUTH_KEEPALIVE_WINDOW="86399"
    )
    settings = load_settings(env)
    assert settings.refresh.keepalive_window_seconds == 86399
    assert settings.di.refresh_lifetime_seconds == 86400


def test_serve_and_check_config_name_both_variables(tmp_path: Path) -> None:
    env = base_env(tmp_path, GARMIN_AUTH_DI_REFRESH_LIFETIME=DAY)
    served = run_cli("serve", env=env)
    assert served.returncode == 2
    (line,) = served.stderr.splitlines()
    assert "GARMIN_AUTH_KEEPALIVE_WINDOW: must be shorter than" in line
    assert "GARMIN_AUTH_DI_REFRESH_LIFETIME" in line
    (checked,) = [result for result in run_checks(env) if result.name == "settings"]
    assert not checked.ok
    assert "GARMIN_AUTH_KEEPALIVE_WINDOW" in checked.detail
    assert "GARMIN_AUTH_DI_REFRESH_LIFETIME" in checked.detail
