"""An http:// GARMIN_SYNC_UPSTREAM_URL beyond this machine is a configuration error unless
GARMIN_SYNC_ALLOW_PLAINTEXT=true (then a warning): the worker sends every user's Garmin access
token there as a bearer.

Before: the worker took any http(s) URL silently, though README gives it "the same meaning as
the service's GARMIN_AUTH_UPSTREAM_URL", which production refuses over http:// and every other
environment warns about; the worker refused plaintext only for its own bearer token (the
auth service without GARMIN_SYNC_TLS_CA). The emulator on loopback (tests, the demo, the
benchmarks) stays allowed without the flag."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from garmin_client.env import ConfigError, EnvReader
from sync_worker.config import ENV_PREFIX, upstream_settings
from tests.worker.test_cli import main_in_process, one_line  # noqa: F401 (a fixture)

TOKEN = "worker-token-0123456789abcdef"


def test_the_worker_refuses_it_before_calling_anything(
    main_in_process: Callable[..., tuple[int, str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    code, _out, err = main_in_process(
        {
            "GARMIN_SYNC_AUTH_TOKEN": TOKEN,
            "GARMIN_SYNC_AUTH_TARGET": "127.0.0.1:1",
            "GARMIN_SYNC_UPSTREAM_URL": "http://203.0.113.7:8080",
        },
        "run",
        "--all",
        "--out",
        str(tmp_path),
    )
    assert code == 2
    line = one_line(err)
    assert "GARMIN_SYNC_UPSTREAM_URL: is http:// to a host beyond this machine" in line
    assert "GARMIN_SYNC_ALLOW_PLAINTEXT=true" in line


@pytest.mark.parametrize(
    "url", ["http://203.0.113.7:8080", "http://garmin-emulator:8080/", "HTTP://[2001:db8::1]"]
)
def test_beyond_this_machine_it_needs_the_opt_in(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError) as raised:
        upstream_settings(EnvReader({"GARMIN_SYNC_UPSTREAM_URL": url}, ENV_PREFIX))
    assert raised.value.variable == "GARMIN_SYNC_UPSTREAM_URL"

    allowed = {"GARMIN_SYNC_UPSTREAM_URL": url, "GARMIN_SYNC_ALLOW_PLAINTEXT": "true"}
    with caplog.at_level("WARNING", logger="sync_worker.config"):
        settings = upstream_settings(EnvReader(allowed, ENV_PREFIX))
    assert settings.base_url == url.rstrip("/")
    assert "cross the network unencrypted" in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://[::1]:8080",
        "https://203.0.113.7:8443",
        "https://connectapi.example.com",
    ],
)
def test_loopback_or_tls_needs_nothing(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="sync_worker.config"):
        settings = upstream_settings(EnvReader({"GARMIN_SYNC_UPSTREAM_URL": url}, ENV_PREFIX))
    assert settings.base_url == url
    assert not caplog.records
