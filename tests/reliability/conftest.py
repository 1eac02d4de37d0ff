"""Fixtures of the reliability tests: the key ring as the text an operator sets (so replicas
in other processes share it), and replicas as `garmin-auth-service serve` processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from auth_service.crypto import Keyring
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import write_callers_file

from . import ReplicaProcess, StartReplica, free_port, service_env


@pytest.fixture
def keyring_value() -> str:
    """GARMIN_AUTH_ENCRYPTION_KEYS of every replica of the test, in process or not."""
    return Keyring.generate_key_value("reliability")


@pytest.fixture
def keyring(keyring_value: str) -> Keyring:
    return Keyring.parse(keyring_value)


@pytest.fixture
def replica_processes(
    keyring_value: str, garmin: GarminEmulator, tmp_path: Path
) -> Iterator[StartReplica]:
    """Starts `garmin-auth-service serve` processes on a migrated database, with the key,
    callers (tests.fixtures.servers.ROLE_TOKENS) and Garmin of the test's in-process replicas;
    each is SERVING when returned (unless wait=False). Every process is stopped, or killed,
    at teardown."""
    started: list[ReplicaProcess] = []
    callers = write_callers_file(tmp_path / "callers-of-processes.toml")

    def start(database_url: str, *, wait: bool = True, **extra_env: str) -> ReplicaProcess:
        env = service_env(
            database_url=database_url,
            keyring_value=keyring_value,
            callers_file=callers,
            upstream_url=garmin.url,
            listen=f"127.0.0.1:{free_port()}",
            **extra_env,
        )
        replica = ReplicaProcess(env, tmp_path / f"replica-{len(started)}.log")
        started.append(replica.start())
        if wait:
            replica.wait_serving()
        return replica

    yield start
    for replica in started:
        replica.stop()
