"""The service's secret files (every GARMIN_AUTH_<SECRET>_FILE, GARMIN_AUTH_WEBHOOK_SECRET_FILE)
are read as the worker's token file is (garmin_client.env.read_secret_file): at most 64 KiB,
from a regular file or a pipe, never waiting on a FIFO nobody writes to; anything else is a
configuration error naming the variable.

Before, Path.read_text(): a FIFO without a writer blocked start-up forever (a pod stuck in
its init container), /dev/zero read until the memory ran out, and a file far larger than any
secret (a log named by mistake) was taken whole as the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auth_service.config import load_settings
from garmin_client.env import MAX_SECRET_FILE_BYTES, ConfigError
from tests.service.test_config_database_source import _env as base_env

# A hang must fail the test, not the run.
pytestmark = pytest.mark.timeout(20)

WEBHOOK = {
    "GARMIN_AUTH_WEBHOOK_URL": "https://hooks.example.com/garmin",
}


def _settings_with(variable: str, path: Path, folder: Path) -> dict[str, str]:
    env = {**base_env(folder), variable: str(path)}
    if variable.startswith("GARMIN_AUTH_WEBHOOK"):
        env.update(WEBHOOK)
    return env


VARIABLES = ("GARMIN_AUTH_DATABASE_URL_FILE", "GARMIN_AUTH_WEBHOOK_SECRET_FILE")


@pytest.mark.parametrize("variable", VARIABLES)
def test_a_fifo_nobody_writes_to_is_refused_at_once(variable: str, tmp_path: Path) -> None:
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as refused:
        load_settings(_settings_with(variable, fifo, tmp_path))
    assert str(refused.value).startswith(variable + ": ")
    # Empty (the webhook secret's variable names files only: "no readable file").
    assert str(refused.value).endswith(("is empty", "names no readable file"))


@pytest.mark.parametrize("variable", VARIABLES)
def test_a_file_larger_than_any_secret_is_refused(variable: str, tmp_path: Path) -> None:
    large = tmp_path / "service.log"
    large.write_text("s" * (MAX_SECRET_FILE_BYTES + 1))
    with pytest.raises(ConfigError) as refused:
        load_settings(_settings_with(variable, large, tmp_path))
    assert str(refused.value).startswith(variable + ": ")
    assert "larger than 64 KiB" in str(refused.value)
    assert "sss" not in str(refused.value)


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(_settings_with("GARMIN_AUTH_DATABASE_URL_FILE", Path("/dev/zero"), tmp_path))
    assert "not a regular file" in str(refused.value)
