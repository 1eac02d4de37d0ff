"""Under mutual TLS "a caller known by its certificate (cert_name) needs no token" (README,
TLS), and an empty authorization value is no token (CallerRegistry.authenticate).

Before: the interceptor's early gate let a call through to the certificate check only when
the header was absent: a certificate caller whose client sent it empty was refused
CALLER_UNAUTHENTICATED "missing authorization metadata", its certificate never looked at.
(From a read-only review of bad input.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from auth_service.config import Settings, TlsSettings
from auth_service.server import RunningServer, build_application, start_server
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.fixtures.certificates import Authority

pytestmark = pytest.mark.timeout(60)

VIEWER_DNS = "dashboard.example"
Mtls = tuple[RunningServer, bytes, Any]


@pytest.fixture
def backend() -> str:
    """The database plays no part: SQLite alone."""
    return "sqlite"


@pytest.fixture
def mtls(service_settings: Settings, tmp_path: Path) -> Iterator[Mtls]:
    folder = tmp_path / "pki"
    ca = Authority.create("review CA")
    server_cert, server_key = ca.issue_server().write(folder, "server")
    callers = folder / "callers.toml"
    callers.write_text(
        f'[[callers]]\nname = "dashboard"\ncert_name = "{VIEWER_DNS}"\nroles = ["viewer"]\n',
        encoding="utf-8",
    )
    settings = replace(
        service_settings,
        callers_file=callers,
        tls=TlsSettings(
            cert_file=server_cert, key_file=server_key, client_ca_file=ca.write(folder)
        ),
    )
    running = start_server(build_application(settings), "127.0.0.1:0")
    client = ca.issue("pod-1", dns_names=(VIEWER_DNS,))
    try:
        yield running, ca.pem, client
    finally:
        running.stop(grace=0)


def _get_status(mtls: Mtls, metadata: tuple[tuple[str, str], ...]) -> pb.GetStatusResponse:
    running, ca_pem, client = mtls
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )
    with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
        stub = pb_grpc.GarminAuthServiceStub(channel)
        request = pb.GetStatusRequest(user_id="alice")
        return cast(pb.GetStatusResponse, stub.GetStatus(request, metadata=metadata, timeout=10))


def test_the_certificate_caller_without_the_header_is_served(mtls: Mtls) -> None:
    """A guard: as before."""
    assert _get_status(mtls, ()).status.user_id == "alice"


def test_the_certificate_caller_with_an_empty_authorization_header_is_served(mtls: Mtls) -> None:
    try:
        answer = _get_status(mtls, (("authorization", ""),))
    except grpc.RpcError as error:
        pytest.fail(f"refused: {error.code().name}: {error.details()}")
    assert answer.status.user_id == "alice"
