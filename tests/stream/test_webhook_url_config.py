"""A GARMIN_AUTH_WEBHOOK_URL that no POST could go to is refused at start-up like any other
malformed setting: one line naming the variable, exit 2, and never the URL itself (it may
carry credentials).

Before, an unclosed "[" (an IPv6 host) crashed `serve` with a ValueError traceback (exit 1),
and a port out of range or not a number was accepted, and so was a host name the HTTP stack
refuses (an empty or over-long label, a space, a control character): every POST then failed,
for ever."""

from __future__ import annotations

from pathlib import Path

import pytest

from auth_service.domain.changes import WebhookSettings
from auth_service.stream_config import read_webhook_settings
from garmin_client.env import ConfigError, EnvReader
from tests.service.test_cli import base_env, run_cli

SECRET = "a-webhook-secret-0123456789"
PASSWORD = "hunter2-in-the-url"


def _read(url: str) -> WebhookSettings:
    env = {"GARMIN_AUTH_WEBHOOK_URL": url, "GARMIN_AUTH_WEBHOOK_SECRET": SECRET}
    return read_webhook_settings(EnvReader(env, "GARMIN_AUTH_"))


@pytest.mark.parametrize(
    "url",
    [
        f"https://hooks:{PASSWORD}@[::1/hooks",  # an unclosed IPv6 bracket
        f"https://hooks:{PASSWORD}@hooks.example.com:99999/hooks",  # a port out of range
        f"https://hooks:{PASSWORD}@hooks.example.com:abc/hooks",  # a port not a number
        f"https://hooks:{PASSWORD}@hooks.example.com:0/hooks",  # no one listens on 0
    ],
)
def test_a_malformed_webhook_url_is_a_config_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _read(url)
    assert raised.value.variable == "GARMIN_AUTH_WEBHOOK_URL"
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        f"https://hooks:{PASSWORD}@hooks..example.com/hooks",  # an empty label (a doubled dot)
        f"https://hooks:{PASSWORD}@{'a' * 64}.example.com/hooks",  # a label over 63 characters
        f"https://hooks:{PASSWORD}@hooks example.com/hooks",  # a space in the host
        f"https://hooks:{PASSWORD}@hooks\n.example.com/hooks",  # urlsplit drops the line break
        f"https://hooks:{PASSWORD}@*.example.com/hooks",  # a wildcard, which requests refuses
    ],
)
def test_a_webhook_url_whose_host_no_post_can_reach_is_a_config_error(url: str) -> None:
    """Before, _check_url looked only at the scheme, the port and that there was a host: a
    host name urlsplit takes but the HTTP stack refuses (urllib3 encodes it with the "idna"
    codec, which fails on an empty or over-long label; requests refuses a wildcard; no name
    with a space resolves) was accepted, and then every POST failed, for ever. Now it is
    refused at start-up, naming the variable and never quoting the URL (nor its password)."""
    with pytest.raises(ConfigError) as raised:
        _read(url)
    assert raised.value.variable == "GARMIN_AUTH_WEBHOOK_URL"
    assert PASSWORD not in str(raised.value)


def test_the_settings_never_show_the_urls_credentials() -> None:
    # Their repr showed the URL, password and all, to whatever logged or printed them.
    settings = _read(f"https://hooks:{PASSWORD}@hooks.example.com/hooks")
    assert PASSWORD not in repr(settings)
    assert SECRET not in repr(settings)


def test_a_webhook_url_with_an_ipv6_host_and_a_port_is_accepted() -> None:
    assert _read("https://[::1]:8443/hooks").url == "https://[::1]:8443/hooks"


def test_serve_with_an_unclosed_ipv6_webhook_url_exits_2_naming_it(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        GARMIN_AUTH_WEBHOOK_URL=f"https://hooks:{PASSWORD}@[::1/hooks",
        GARMIN_AUTH_WEBHOOK_SECRET=SECRET,
    )
    result = run_cli("serve", env=env, timeout=60)
    assert result.returncode == 2, (result.returncode, result.stderr[-600:])
    assert "GARMIN_AUTH_WEBHOOK_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr


def test_production_refuses_credentials_in_a_plaintext_webhook_url() -> None:
    """Secure by default: credentials in an http:// URL travel in clear, as HTTP Basic, on
    every POST. Before, GARMIN_AUTH_ENVIRONMENT=production accepted them (as it refuses a
    plaintext listener beyond loopback and a plaintext upstream)."""
    url = f"http://hooks:{PASSWORD}@hooks.example.com/hooks"
    env = {"GARMIN_AUTH_WEBHOOK_URL": url, "GARMIN_AUTH_WEBHOOK_SECRET": SECRET}
    with pytest.raises(ConfigError) as raised:
        read_webhook_settings(EnvReader(env, "GARMIN_AUTH_"), production=True)
    assert raised.value.variable == "GARMIN_AUTH_WEBHOOK_URL"
    assert "https://" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    # Elsewhere (the emulator, a development receiver) it stays allowed, as before; and in
    # production an https:// URL with credentials, or an http:// one without, is fine.
    assert _read(url).url == url
    for allowed in (url.replace("http://", "https://"), "http://hooks.example.com/hooks"):
        env["GARMIN_AUTH_WEBHOOK_URL"] = allowed
        assert read_webhook_settings(EnvReader(env, "GARMIN_AUTH_"), production=True).url


def test_serve_in_production_with_credentials_in_a_plaintext_webhook_url_exits_2(
    tmp_path: Path,
) -> None:
    env = base_env(
        tmp_path,
        GARMIN_AUTH_ENVIRONMENT="production",
        GARMIN_AUTH_WEBHOOK_URL=f"http://hooks:{PASSWORD}@127.0.0.1:9/hooks",
        GARMIN_AUTH_WEBHOOK_SECRET=SECRET,
    )
    result = run_cli("serve", env=env, timeout=60)
    assert result.returncode == 2, (result.returncode, result.stderr[-600:])
    assert "GARMIN_AUTH_WEBHOOK_URL" in result.stderr
    assert PASSWORD not in result.stderr
