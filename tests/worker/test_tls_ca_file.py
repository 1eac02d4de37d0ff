"""GARMIN_SYNC_TLS_CA naming a file that holds no PEM certificate (a wrong Secret key, a
truncated mount) is a configuration error: exit 2, one line naming the variable (README, the
worker's exit codes). Before, sync_worker.config.auth_client_config only checked that the file
existed; gRPC then failed every handshake, and the run ended exit 3, "the auth service ... is
unreachable (UNAVAILABLE)", after ~3 s of retries: the operator was sent to look at the
network instead of the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica
from tests.worker import WORKER_SCRIPT, connect, worker_env


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_a_ca_file_without_a_certificate_is_a_configuration_error(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "u1", activities=1)
    ca = tmp_path / "ca.crt"
    ca.write_text("not a certificate\n", encoding="utf-8")
    env = worker_env(service.target, garmin, GARMIN_SYNC_TLS_CA=str(ca))
    result = subprocess.run(
        [WORKER_SCRIPT, "run", "--user", "u1", "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-600:])
    [line] = result.stderr.strip().splitlines()
    assert "GARMIN_SYNC_TLS_CA" in line
