"""Fixtures of the change stream tests: replicas whose streams poll and beat fast, and the
reliability tests' replicas as processes (for SIGKILL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from auth_service.domain.changes import StreamSettings
from tests.fixtures.servers import Replica, ServiceFactory
from tests.reliability.conftest import keyring, keyring_value, replica_processes

__all__ = ["keyring", "keyring_value", "replica_processes"]

# Heartbeats every half second and short polls: the tests wait for seconds, not minutes.
FAST_STREAM = StreamSettings(
    max_watchers=8, heartbeat_seconds=0.5, poll_seconds=0.2, send_timeout_seconds=30
)

StartReplica = Callable[..., Replica]


@pytest.fixture
def start_replica(service_factory: ServiceFactory) -> StartReplica:
    def start(**overrides: Any) -> Replica:
        overrides.setdefault("stream", FAST_STREAM)
        return service_factory.start(**overrides)

    return start
