"""Loopback targets in gRPC's own forms need no TLS: they are this machine.

sync_worker.config.on_this_machine takes the text after the last ':' as the port, so an
address list (gRPC's ipv4:/ipv6: schemes take comma-separated addresses) is never loopback,
nor is a host name in capitals (DNS names are case-insensitive): a worker that dialled these
before now exits 2 asking for GARMIN_SYNC_TLS_CA.
"""

from __future__ import annotations

import pytest

from garmin_client.env import EnvReader
from sync_worker.config import ENV_PREFIX, auth_client_config, on_this_machine

TOKEN = {"GARMIN_SYNC_AUTH_TOKEN": "worker-token-0123456789abcdef"}


@pytest.mark.parametrize(
    "target",
    ["ipv4:127.0.0.1:50051,127.0.0.2:50051", "ipv6:[::1]:50051,[::1]:50052", "LOCALHOST:50051"],
)
def test_loopback_target_forms_need_no_tls(target: str) -> None:
    assert on_this_machine(target), f"{target!r} names only this machine"
    assert auth_client_config(EnvReader(TOKEN, ENV_PREFIX), target, 10.0).target == target


@pytest.mark.parametrize("target", ["ipv4:127.0.0.1:50051,10.0.0.7:50051"])
def test_a_list_with_one_remote_address_still_needs_tls(target: str) -> None:
    assert not on_this_machine(target)
