"""Who a client certificate is does not depend on the order of the callers file.

The callers file refuses one cert_name in two entries, as it would make the caller (and its
roles) depend on the order of the file. A certificate may carry several DNS names, though,
and when two entries named two of them, CallerRegistry._by_certificate took whichever came
first: the same certificate was the viewer "dashboard" with one order and the admin "ops"
with the other (roles, scope, lease binding). Such a certificate is now refused,
UNAUTHENTICATED, naming both callers, whatever the order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from auth_service.config import Settings, TlsSettings
from auth_service.server import RunningServer, build_application, start_server
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.fixtures.certificates import Authority

pytestmark = pytest.mark.timeout(60)

VIEWER_DNS = "dashboard.example"
ADMIN_DNS = "ops.example"
VIEWER_ENTRY = f'[[callers]]\nname = "dashboard"\ncert_name = "{VIEWER_DNS}"\nroles = ["viewer"]\n'
ADMIN_ENTRY = f'[[callers]]\nname = "ops"\ncert_name = "{ADMIN_DNS}"\nroles = ["admin"]\n'


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for server in started:
        server.stop(grace=0)


def _identity(
    service_settings: Settings, tmp_path: Path, servers: list[RunningServer], entries: str
) -> str:
    """Start an mTLS server with `entries` as its callers file; its answer to a certificate
    whose DNS names name both entries, calling an RPC neither role may call."""
    folder = tmp_path / f"pki-{len(servers)}"
    ca = Authority.create("review CA")
    server_cert, server_key = ca.issue_server().write(folder, "server")
    callers = folder / "callers.toml"
    callers.write_text(entries, encoding="utf-8")
    settings = replace(
        service_settings,
        callers_file=callers,
        tls=TlsSettings(
            cert_file=server_cert, key_file=server_key, client_ca_file=ca.write(folder)
        ),
    )
    running = start_server(build_application(settings), "127.0.0.1:0")
    servers.append(running)
    client = ca.issue("pod-1234", dns_names=(VIEWER_DNS, ADMIN_DNS))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.pem, private_key=client.key_pem, certificate_chain=client.cert_pem
    )
    with grpc.secure_channel(f"127.0.0.1:{running.port}", credentials) as channel:
        stub = pb_grpc.GarminAuthServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.LeaseSession(pb.LeaseSessionRequest(user_id="alice", holder="h"), timeout=10)
    return f"{raised.value.code().name}: {raised.value.details()}"


def test_a_certificate_naming_two_callers_is_refused_whatever_the_order(
    service_settings: Settings, tmp_path: Path, servers: list[RunningServer]
) -> None:
    first = _identity(service_settings, tmp_path, servers, VIEWER_ENTRY + "\n" + ADMIN_ENTRY)
    time.sleep(0.01)
    second = _identity(service_settings, tmp_path, servers, ADMIN_ENTRY + "\n" + VIEWER_ENTRY)
    # Before: PERMISSION_DENIED for caller 'dashboard', then for caller 'ops'.
    for answer in (first, second):
        assert answer.startswith("UNAUTHENTICATED:"), answer
        assert "names several callers" in answer
        assert "'dashboard'" in answer
        assert "'ops'" in answer
