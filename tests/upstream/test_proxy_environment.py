"""requests' per-request reading of the environment is settled once only where that is exact:
no proxy variable and no netrc file; otherwise the session reads per request as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from garmin_client.proxy_environment import read_environment_once

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name in ("NETRC", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_without_proxies_or_netrc_the_environment_is_read_once(
    plain_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/curl.pem")
    session = requests.Session()
    read_environment_once(session)
    assert session.trust_env is False
    assert session.verify == "/etc/ssl/curl.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/requests.pem")
    session = requests.Session()
    read_environment_once(session)
    assert session.verify == "/etc/ssl/requests.pem"


def test_without_a_ca_bundle_the_default_verification_stays(plain_environment: Path) -> None:
    session = requests.Session()
    read_environment_once(session)
    assert (session.trust_env, session.verify) == (False, True)


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "NO_PROXY"])
def test_a_proxy_variable_keeps_the_per_request_reading(
    plain_environment: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "http://proxy.internal:3128")
    session = requests.Session()
    read_environment_once(session)
    assert (session.trust_env, session.verify) == (True, True)


def test_a_netrc_file_keeps_the_per_request_reading(
    plain_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (plain_environment / ".netrc").write_text("machine example.com login a password b\n")
    session = requests.Session()
    read_environment_once(session)
    assert session.trust_env is True
    (plain_environment / ".netrc").unlink()
    monkeypatch.setenv("NETRC", str(plain_environment / "elsewhere"))
    session = requests.Session()
    read_environment_once(session)
    assert session.trust_env is True
