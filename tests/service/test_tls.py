"""TLS and mutual TLS on the gRPC port, with certificates made for each test (cryptography):
who gets in, who is who, certificate rotation without a restart, and the README's grpcurl
commands over TLS run with the real grpcurl binary."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.api.callers import CallersFileError, parse_callers
from auth_service.config import PREFIX, Settings, TlsSettings, load_settings
from auth_service.server import RunningServer, build_application, start_server
from auth_service.tls import TlsFilesError, certificate_identities
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_client.env import ConfigError
from tests.fixtures.certificates import Authority, Issued
from tests.fixtures.logs import RecordingHandler
from tests.fixtures.servers import ROLE_TOKENS, expect_failure, write_callers_file
from tests.service.test_readme_grpcurl import README, README_TARGET, grpcurl_binary

WORKER_DNS = "sync-worker.garmin-auth.svc"
VIEWER_CN = "ops-cli"
# Fast enough for tests; production checks every few seconds (TlsSettings' default).
RELOAD_CHECK_SECONDS = 0.2
TLS_BLOCK = re.compile(
    r"<!-- grpcurl-tls-examples -->\s*```sh\n(.*?)```\s*<!-- /grpcurl-tls-examples -->", re.S
)


@pytest.fixture
def backend() -> str:
    """Transport security does not depend on the database: SQLite only."""
    return "sqlite"


@dataclass
class Pki:
    """A CA, the server's certificate, and client certificates of several kinds."""

    folder: Path
    ca: Authority
    ca_file: Path
    server: Issued
    server_cert: Path
    server_key: Path
    # Named in the callers file by a DNS SAN (its CN is a pod name, deliberately unknown).
    worker: Issued
    # Named in the callers file by its CN.
    viewer: Issued
    # Signed by the CA but named by no callers entry.
    stranger: Issued
    # From another CA, with the viewer's very name.
    rogue: Issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    ca = Authority.create("garmin-auth test CA")
    server = ca.issue_server()
    server_cert, server_key = server.write(folder, "server")
    return Pki(
        folder=folder,
        ca=ca,
        ca_file=ca.write(folder),
        server=server,
        server_cert=server_cert,
        server_key=server_key,
        worker=ca.issue("sync-worker-7d9f", dns_names=(WORKER_DNS,)),
        viewer=ca.issue(VIEWER_CN),
        stranger=ca.issue("stranger", dns_names=("stranger.example",)),
        rogue=Authority.create("rogue CA").issue(VIEWER_CN),
    )


def write_callers(path: Path) -> Path:
    """The token callers of the other tests, plus two callers known by certificate."""
    write_callers_file(path)
    with path.open("a", encoding="utf-8") as callers:
        callers.write(
            f'\n[[callers]]\nname = "worker-by-certificate"\ncert_name = "{WORKER_DNS}"\n'
            'roles = ["worker"]\n'
            f'\n[[callers]]\nname = "viewer-by-certificate"\ncert_name = "{VIEWER_CN}"\n'
            'roles = ["viewer"]\n'
        )
    return path


@dataclass
class TlsServer:
    running: RunningServer
    pki: Pki
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self, client: Issued | None = None, *, ca_pem: bytes | None = None) -> grpc.Channel:
        """A new channel with its own connection (so every channel makes a handshake)."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem or self.pki.ca.pem,
            private_key=client.key_pem if client else None,
            certificate_chain=client.cert_pem if client else None,
        )
        channel = grpc.secure_channel(
            self.target, credentials, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.channels.append(channel)
        return channel

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        self.running.stop(grace=0)


StartTls = Callable[..., TlsServer]


@pytest.fixture
def start_tls(service_settings: Settings, pki: Pki, tmp_path: Path) -> Iterator[StartTls]:
    started: list[TlsServer] = []

    def start(*, mutual: bool = True) -> TlsServer:
        settings = replace(
            service_settings,
            callers_file=write_callers(tmp_path / "callers-tls.toml"),
            tls=TlsSettings(
                cert_file=pki.server_cert,
                key_file=pki.server_key,
                client_ca_file=pki.ca_file if mutual else None,
                reload_check_seconds=RELOAD_CHECK_SECONDS,
            ),
        )
        server = TlsServer(start_server(build_application(settings), "127.0.0.1:0"), pki)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def health_check(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def get_status(channel: grpc.Channel, token: str | None = None) -> pb.GetStatusResponse:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    stub = pb_grpc.GarminAuthServiceStub(channel)
    answer = stub.GetStatus(pb.GetStatusRequest(user_id="alice"), metadata=metadata, timeout=5)
    return cast(pb.GetStatusResponse, answer)


def refused(call: Callable[[], object]) -> grpc.StatusCode:
    """The code of a call that must fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()


def served_serial(server: TlsServer, client: Issued | None) -> int:
    """The serial of the certificate the server presents to a new connection right now."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Only reading what is served, whichever CA signed it.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if client is not None:
        cert, key = client.write(server.pki.folder / "probe", "client")
        context.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def replace_atomically(path: Path, content: bytes) -> None:
    """What cert-manager's volume update amounts to: the new file appears at once."""
    temporary = path.with_suffix(path.suffix + ".new")
    temporary.write_bytes(content)
    temporary.replace(path)


def wait_for(condition: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


# --- who gets in ---------------------------------------------------------------------------


def test_plaintext_client_is_refused_by_a_tls_server(start_tls: StartTls) -> None:
    server = start_tls(mutual=False)
    with grpc.insecure_channel(server.target) as channel:
        assert refused(lambda: health_check(channel)) == grpc.StatusCode.UNAVAILABLE
    # ... while a TLS client gets an answer.
    assert health_check(server.channel()) == health_pb2.HealthCheckResponse.SERVING


def test_client_without_certificate_is_refused_under_mutual_tls(start_tls: StartTls) -> None:
    server = start_tls(mutual=True)
    channel = server.channel(client=None)
    assert refused(lambda: health_check(channel)) == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_an_unknown_ca_is_refused(start_tls: StartTls, pki: Pki) -> None:
    server = start_tls(mutual=True)
    channel = server.channel(client=pki.rogue)
    # Refused at the handshake, although the rogue certificate carries a known caller's name.
    assert refused(lambda: get_status(channel)) == grpc.StatusCode.UNAVAILABLE


# --- who is who ----------------------------------------------------------------------------


def test_certificate_names_its_caller_and_roles(start_tls: StartTls, pki: Pki) -> None:
    server = start_tls(mutual=True)
    # The worker certificate matches its callers entry by DNS SAN: GetStatus is a worker RPC,
    # ListSessions is not.
    worker = pb_grpc.GarminAuthServiceStub(server.channel(client=pki.worker))
    status = worker.GetStatus(pb.GetStatusRequest(user_id="alice"), timeout=5).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    failure = expect_failure(lambda: worker.ListSessions(pb.ListSessionsRequest(), timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
    assert "worker-by-certificate" in failure.message
    # The viewer certificate matches by subject CN.
    viewer = pb_grpc.GarminAuthServiceStub(server.channel(client=pki.viewer))
    viewer.ListSessions(pb.ListSessionsRequest(page_size=5), timeout=5)
    failure = expect_failure(
        lambda: viewer.LeaseSession(pb.LeaseSessionRequest(user_id="alice", holder="h"), timeout=5)
    )
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


def test_certificate_matching_no_caller_is_unauthenticated(start_tls: StartTls, pki: Pki) -> None:
    server = start_tls(mutual=True)
    channel = server.channel(client=pki.stranger)
    # The handshake succeeds (the CA signed it): health needs no caller ...
    assert health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    # ... but the service does not know this certificate.
    failure = expect_failure(lambda: get_status(channel))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLER_UNAUTHENTICATED",
    )
    assert "stranger" in failure.message


def test_the_common_name_does_not_count_when_the_certificate_has_sans(
    start_tls: StartTls, pki: Pki
) -> None:
    """RFC 6125: the viewer entry names a CN; a certificate with that CN but SANs of its
    own is identified by its SANs only, so it is not the viewer. Before the fix it was."""
    server = start_tls(mutual=True)
    lookalike = pki.ca.issue(VIEWER_CN, dns_names=("someone-else.example",))
    failure = expect_failure(lambda: get_status(server.channel(client=lookalike)))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLER_UNAUTHENTICATED",
    )
    assert get_status(server.channel(client=pki.viewer)).status.user_id == "alice"


def test_bearer_token_over_tls(start_tls: StartTls) -> None:
    server = start_tls(mutual=False)
    channel = server.channel()
    assert get_status(channel, ROLE_TOKENS["viewer"]).status.user_id == "alice"
    assert refused(lambda: get_status(channel)) == grpc.StatusCode.UNAUTHENTICATED
    assert refused(lambda: get_status(channel, "not-a-token")) == grpc.StatusCode.UNAUTHENTICATED


def test_bearer_token_wins_over_the_certificate_under_mutual_tls(
    start_tls: StartTls, pki: Pki
) -> None:
    server = start_tls(mutual=True)
    # A certificate known to no callers entry, with an admin token: the token decides.
    stub = pb_grpc.GarminAuthServiceStub(server.channel(client=pki.stranger))
    metadata = (("authorization", f"Bearer {ROLE_TOKENS['admin']}"),)
    stub.ListSessions(pb.ListSessionsRequest(), metadata=metadata, timeout=5)
    # A known certificate with a wrong token is refused: a token, once given, must be right.
    worker = server.channel(client=pki.worker)
    assert refused(lambda: get_status(worker, "wrong-token")) == grpc.StatusCode.UNAUTHENTICATED


def test_certificates_are_ignored_without_mutual_tls(start_tls: StartTls, pki: Pki) -> None:
    server = start_tls(mutual=False)
    # The server asks for no client certificate, so none can name a caller.
    channel = server.channel(client=pki.viewer)
    assert refused(lambda: get_status(channel)) == grpc.StatusCode.UNAUTHENTICATED


def test_identities_are_the_dns_names_else_the_common_name(pki: Pki) -> None:
    names = certificate_identities({"x509_pem_cert": [pki.worker.cert_pem]})
    assert names == (WORKER_DNS,)  # its CN (a pod name) does not count beside SANs
    assert certificate_identities({"x509_pem_cert": [pki.viewer.cert_pem]}) == (VIEWER_CN,)
    assert certificate_identities({}) == ()
    assert certificate_identities({"x509_common_name": [b"only-cn"]}) == ("only-cn",)


# --- rotation ------------------------------------------------------------------------------


def test_rotated_certificate_is_served_without_restart(start_tls: StartTls, pki: Pki) -> None:
    server = start_tls(mutual=True)
    assert served_serial(server, pki.viewer) == pki.server.serial
    # cert-manager renews the certificate, from a new CA even.
    new_ca = Authority.create("garmin-auth test CA, renewed")
    renewed = new_ca.issue_server()
    replace_atomically(pki.server_key, renewed.key_pem)
    replace_atomically(pki.server_cert, renewed.cert_pem)
    assert wait_for(lambda: served_serial(server, pki.viewer) == renewed.serial)
    # Clients that trust the new CA get in; the server never restarted (same port, same
    # process), and client certificates from the unchanged client CA still work.
    viewer = pb_grpc.GarminAuthServiceStub(server.channel(client=pki.viewer, ca_pem=new_ca.pem))
    viewer.ListSessions(pb.ListSessionsRequest(), timeout=5)
    old_trust = server.channel(client=pki.viewer, ca_pem=pki.ca.pem)
    assert refused(lambda: get_status(old_trust)) == grpc.StatusCode.UNAVAILABLE


def test_broken_files_keep_the_certificate_in_use(
    start_tls: StartTls, pki: Pki, no_secret_in_logs: RecordingHandler
) -> None:
    server = start_tls(mutual=True)

    def still_serving_after_logging(message: str) -> bool:
        # Each probe is a new handshake, which is when the server looks at the files.
        serial = served_serial(server, pki.viewer)
        logged = any(message in text for _, text in no_secret_in_logs.texts)
        assert serial == pki.server.serial
        return logged

    # Half-written: the key file is cut short.
    pki.server_key.write_bytes(pki.server.key_pem[:40])
    assert wait_for(lambda: still_serving_after_logging("TLS files changed but were not loaded"))
    assert health_check(server.channel(client=pki.viewer)) == health_pb2.HealthCheckResponse.SERVING
    # A key that does not belong to the certificate is refused the same way.
    other = pki.ca.issue_server()
    pki.server_key.write_bytes(other.key_pem)
    assert wait_for(lambda: still_serving_after_logging("does not belong to the certificate"))
    # Once the pair is whole again, it is served.
    pki.server_cert.write_bytes(other.cert_pem)
    assert wait_for(lambda: served_serial(server, pki.viewer) == other.serial)


def test_default_reload_check_is_well_within_a_minute(pki: Pki) -> None:
    assert TlsSettings(pki.server_cert, pki.server_key).reload_check_seconds <= 10


# --- start-up errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "missing"),
    [("TLS_CERT", "TLS_KEY"), ("TLS_KEY", "TLS_CERT"), ("TLS_CLIENT_CA", "TLS_CLIENT_CA")],
)
def test_tls_settings_come_as_a_pair(pki: Pki, present: str, missing: str) -> None:
    env = {
        PREFIX + "ENCRYPTION_KEYS": "k1:" + "A" * 43 + "=",
        PREFIX + "OAUTH_CONSUMER_KEY": "k",
        PREFIX + "OAUTH_CONSUMER_SECRET": "s",
        PREFIX + "ALLOW_UNAUTHENTICATED": "true",
        PREFIX + present: str(pki.server_cert),
    }
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert raised.value.variable == PREFIX + missing


def test_unloadable_files_stop_start_up_naming_the_variable(
    service_settings: Settings, pki: Pki
) -> None:
    stray = pki.ca.issue_server()
    mismatched = replace(
        service_settings,
        tls=TlsSettings(pki.server_cert, stray.write(pki.folder, "stray")[1]),
    )
    with pytest.raises(TlsFilesError) as raised:
        start_server(build_application(mismatched), "127.0.0.1:0")
    assert raised.value.variable == PREFIX + "TLS_KEY"
    missing = replace(service_settings, tls=TlsSettings(pki.folder / "nope.crt", pki.server_key))
    with pytest.raises(TlsFilesError) as raised:
        start_server(build_application(missing), "127.0.0.1:0")
    assert raised.value.variable == PREFIX + "TLS_CERT"


# --- the README's grpcurl commands over TLS ---------------------------------------------------


def run_grpcurl_script(script: str, cwd: Path, target: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(grpcurl_binary()).parent}{os.pathsep}{os.environ['PATH']}",
        "ADMIN_TOKEN": ROLE_TOKENS["admin"],
    }
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(README_TARGET, target)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_readme_grpcurl_examples_over_mutual_tls(
    start_tls: StartTls, pki: Pki, tmp_path: Path
) -> None:
    server = start_tls(mutual=True)
    # The files the README's commands name, relative to where they run.
    workdir = tmp_path / "operator"
    pki.ca.write(workdir / "tls")
    pki.viewer.write(workdir / "tls", "client")
    match = TLS_BLOCK.search(README.read_text(encoding="utf-8"))
    assert match, "README lost its grpcurl-over-TLS examples block"
    result = run_grpcurl_script(match.group(1), workdir, server.target)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "garmin_auth.v1.GarminAuthService" in out  # list
    assert '"status": "SERVING"' in out  # health
    assert "SESSION_STATE_NOT_CONNECTED" in out  # GetStatus as the certificate's caller
    # Plaintext grpcurl against the TLS port fails.
    plaintext = run_grpcurl_script(
        f"grpcurl -plaintext {README_TARGET} list", workdir, server.target
    )
    assert plaintext.returncode != 0


# --- the callers file's certificate entries ---------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('cert_name = "*.garmin-auth.svc"', "cert_name must be a certificate common name"),
        ('cert_name = ""', "cert_name must be a certificate common name"),
        (
            f'cert_name = "w.svc"\ntoken_sha256 = "{"0" * 64}"',
            "give exactly one of token_sha256 and cert_name",
        ),
    ],
)
def test_certificate_entries_are_checked(entry: str, problem: str) -> None:
    text = f'[[callers]]\nname = "w"\n{entry}\nroles = ["worker"]\n'
    with pytest.raises(CallersFileError, match=re.escape(problem)):
        parse_callers(text, "callers.toml")


def test_one_certificate_name_names_one_caller() -> None:
    entry = '[[callers]]\nname = "{name}"\ncert_name = "{cert}"\nroles = ["worker"]\n'
    text = entry.format(name="a", cert="w.svc") + entry.format(name="b", cert="W.svc")
    with pytest.raises(CallersFileError, match="cert_name values must be unique"):
        parse_callers(text, "callers.toml")
