"""The worker's TLS options against a real replica serving mutual TLS (auth_service.tls)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from auth_service.config import TlsSettings
from garmin_emulator import GarminEmulator
from tests.fixtures.certificates import Authority
from tests.fixtures.servers import Replica, ServiceFactory

from . import connect, make_config, run_worker

pytestmark = pytest.mark.timeout(60)
SERVER_NAME = "localhost"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.create("worker test CA")


@pytest.fixture
def pki(authority: Authority, tmp_path: Path) -> Pki:
    client_cert, client_key = authority.issue("sync-worker").write(tmp_path, "client")
    return Pki(authority.write(tmp_path), client_cert, client_key)


@pytest.fixture
def tls_target(
    service: Replica, service_factory: ServiceFactory, authority: Authority, tmp_path: Path
) -> str:
    """A second replica, on the same database as `service`, that speaks mutual TLS only."""
    server_cert, server_key = authority.issue_server().write(tmp_path, "server")
    replica = service_factory.start(
        tls=TlsSettings(server_cert, server_key, client_ca_file=authority.write(tmp_path))
    )
    return replica.target


def test_the_worker_syncs_over_mutual_tls(
    service: Replica, garmin: GarminEmulator, tls_target: str, pki: Pki, tmp_path: Path
) -> None:
    connect(service, garmin, "tia", activities=2)
    config = make_config(tls_target, garmin, tmp_path, users=("tia",))
    tls = dataclasses.replace(
        config.auth,
        tls_ca_file=pki.ca,
        tls_cert_file=pki.client_cert,
        tls_key_file=pki.client_key,
        tls_server_name=SERVER_NAME,
    )

    result = run_worker(dataclasses.replace(config, auth=tls))

    assert result.exit_code == 0
    assert result.outcome("tia") == "SYNCED"
    assert result.users["tia"]["items"] == 2


@pytest.mark.parametrize("problem", ["plaintext", "no-client-cert", "wrong-server-name"])
def test_a_tls_mismatch_is_the_auth_service_being_unreachable(
    service: Replica,
    garmin: GarminEmulator,
    tls_target: str,
    pki: Pki,
    tmp_path: Path,
    problem: str,
) -> None:
    connect(service, garmin, "uma", activities=1)
    config = make_config(tls_target, garmin, tmp_path, users=("uma",))
    auth = {
        "plaintext": config.auth,
        "no-client-cert": dataclasses.replace(
            config.auth, tls_ca_file=pki.ca, tls_server_name=SERVER_NAME
        ),
        "wrong-server-name": dataclasses.replace(
            config.auth,
            tls_ca_file=pki.ca,
            tls_cert_file=pki.client_cert,
            tls_key_file=pki.client_key,
            tls_server_name="someone-else.test",
        ),
    }[problem]

    result = run_worker(dataclasses.replace(config, auth=auth))

    assert result.exit_code == 3
    assert result.report.fatal is not None
    assert result.report.fatal.unreachable
    assert "uma" not in result.users
