"""A malformed GARMIN_AUTH_UPSTREAM_URL / GARMIN_SYNC_UPSTREAM_URL is a configuration error
(README "Configuration": one line naming the variable; the worker's exit 2). Before,
garmin_client.settings.read_upstream_settings checked only the scheme prefix: `https://[bad`
(an unclosed IPv6 bracket) or a port out of range was accepted, `serve` started and every DI
sign-in answered INTERNAL (urlsplit raised ValueError in garmin_client.transport), and the
worker ran and failed every user with a ValueError traceback (exit 1). check-config refused
the same value; both now apply one rule (garmin_client.settings.upstream_url_problem).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica
from tests.service.test_cli import base_env, run_cli
from tests.worker import WORKER_SCRIPT, connect, worker_env

MALFORMED = ("https://[bad", "http://127.0.0.1:99999")


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.mark.parametrize("url", MALFORMED)
def test_serve_refuses_a_malformed_upstream_url_with_one_line(tmp_path: Path, url: str) -> None:
    env = base_env(tmp_path, GARMIN_AUTH_LISTEN="127.0.0.1:0")
    assert run_cli("migrate", env=env).returncode == 0
    # check-config already says it is malformed ...
    checked = run_cli("check-config", env={**env, "GARMIN_AUTH_UPSTREAM_URL": url})
    assert "FAIL upstream" in checked.stdout
    # ... serve must not start on it.
    try:
        result = run_cli("serve", env={**env, "GARMIN_AUTH_UPSTREAM_URL": url}, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve started with GARMIN_AUTH_UPSTREAM_URL={url!r} (still running)")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "GARMIN_AUTH_UPSTREAM_URL" in line


@pytest.mark.parametrize("url", MALFORMED)
def test_the_worker_refuses_a_malformed_upstream_url_with_one_line(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, url: str
) -> None:
    connect(service, garmin, "u1", activities=2)
    env = worker_env(service.target, garmin, GARMIN_SYNC_UPSTREAM_URL=url)
    result = subprocess.run(
        [WORKER_SCRIPT, "run", "--user", "u1", "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-600:])
    [line] = result.stderr.strip().splitlines()
    assert "GARMIN_SYNC_UPSTREAM_URL" in line
    assert "Traceback" not in result.stderr
