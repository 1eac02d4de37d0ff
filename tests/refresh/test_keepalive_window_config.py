"""A keep-alive window shorter than a few pass intervals is refused at start.

A session is due only while its refresh token has less than GARMIN_AUTH_KEEPALIVE_WINDOW left;
passes GARMIN_AUTH_KEEPALIVE_INTERVAL apart (each within its own documented range) could
step over that stretch, and the session died although keep-alive ran throughout. Before,
INTERVAL=3600 with WINDOW=600 loaded, and a session due 50 minutes later was met by no pass
(found by review). Now the window must hold 3 passes; at that bound a session entering the
window between passes is still refreshed before it dies.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.config import load_settings
from auth_service.domain.clock import FakeClock
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_client.env import ConfigError
from tests.leases import read_row
from tests.refresh import DiAccounts, build_replica
from tests.refresh.conftest import SETTINGS
from tests.service.test_cli import base_env

pytestmark = pytest.mark.timeout(60)


def test_a_window_shorter_than_three_intervals_is_refused(tmp_path: Path) -> None:
    env = base_env(
        tmp_path, GARMIN_AUTH_KEEPALIVE_INTERVAL="3600", GARMIN_AUTH_KEEPALIVE_WINDOW="600"
    )
    with pytest.raises(ConfigError, match="GARMIN_AUTH_KEEPALIVE_WINDOW") as refused:
        load_settings(env)
    assert "GARMIN_AUTH_KEEPALIVE_INTERVAL" in str(refused.value)


def test_at_the_bound_a_session_entering_the_window_between_passes_is_refreshed(
    tmp_path: Path,
    accounts: DiAccounts,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    env = base_env(
        tmp_path, GARMIN_AUTH_KEEPALIVE_INTERVAL="3600", GARMIN_AUTH_KEEPALIVE_WINDOW="10800"
    )
    loaded = load_settings(env).refresh
    settings = dataclasses.replace(
        SETTINGS,
        keepalive_interval_seconds=loaded.keepalive_interval_seconds,
        keepalive_window_seconds=loaded.keepalive_window_seconds,
    )
    replica = build_replica(db_sessionmaker, box, upstream, clock, settings)
    # Enters the window 10 minutes after the first pass.
    accounts.seed("enters-late", refresh_in=timedelta(hours=3, minutes=10))
    dies_at = read_row(db_sessionmaker, "enters-late").refresh_token_expires_at
    assert dies_at is not None

    while clock.now() < dies_at and accounts.refreshes("enters-late") == 0:
        replica.keepalive.run_once()
        clock.advance(settings.keepalive_interval_seconds)
    assert accounts.refreshes("enters-late") > 0
    assert clock.now() < dies_at
