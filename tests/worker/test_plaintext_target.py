"""The worker dials the auth service without TLS only on this machine, unless told to. Before,
without GARMIN_SYNC_TLS_CA it dialled any target in plaintext, silently: a CronJob whose CA
variable an overlay dropped sent its bearer token (the worker role, which receives Garmin
access tokens) across the network in clear (a review's reproduction saw it arrive at a
plaintext listener). Now that is a configuration error naming GARMIN_SYNC_TLS_CA, exit 2,
before anything is dialled; GARMIN_SYNC_ALLOW_PLAINTEXT=true allows it where the network
encrypts (a mesh) or in development."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from garmin_client.env import ConfigError, EnvReader
from garmin_emulator import GarminEmulator
from sync_worker.config import ENV_PREFIX, auth_client_config
from tests.worker import worker_env
from tests.worker.test_cli import main_in_process, one_line  # noqa: F401 (a fixture)

TOKEN = {"GARMIN_SYNC_AUTH_TOKEN": "worker-token-0123456789abcdef"}


@pytest.mark.parametrize(
    "target",
    ["dns:///garmin-auth:50051", "garmin-auth:50051", "10.0.0.7:50051", "ipv4:192.0.2.1:50051"],
)
def test_a_target_beyond_this_machine_needs_tls(target: str) -> None:
    with pytest.raises(ConfigError) as raised:
        auth_client_config(EnvReader(TOKEN, ENV_PREFIX), target, 10.0)
    assert raised.value.variable == "GARMIN_SYNC_TLS_CA"
    allowed = EnvReader({**TOKEN, "GARMIN_SYNC_ALLOW_PLAINTEXT": "true"}, ENV_PREFIX)
    assert auth_client_config(allowed, target, 10.0).target == target


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "dns:///localhost:50051", "unix:/s"],
)
def test_this_machine_needs_no_tls(target: str) -> None:
    assert auth_client_config(EnvReader(TOKEN, ENV_PREFIX), target, 10.0).target == target


def test_the_worker_refuses_before_dialling(
    garmin: GarminEmulator,
    tmp_path: Path,
    main_in_process: Callable[..., tuple[int, str, str]],  # noqa: F811
) -> None:
    env = {
        name: value
        for name, value in worker_env("dns:///garmin-auth:50051", garmin).items()
        if name.startswith("GARMIN_SYNC_")
    }
    code, _, err = main_in_process(env, "run", "--all", "--out", str(tmp_path))
    assert code == 2
    assert "GARMIN_SYNC_TLS_CA" in one_line(err)
    assert env["GARMIN_SYNC_AUTH_TOKEN"] not in err
