"""A Connect API answer that trickles in holds neither a sync thread, nor its user's lease,
nor a stopping run.

Before: urllib3 and requests time each socket read only (GARMIN_SYNC_UPSTREAM_TIMEOUT), and
the worker's Connect API client had no whole-call deadline (garmin_client.transport: "The
Connect API client leaves it off"): an answer arriving a byte every 0.5 s, each within the
2 s timeout, kept the sync thread inside the read for as long as it lasted, the lease renewed
in the background the whole time, and a stop request (SIGTERM) or --max-runtime was not
noticed until the answer ended (10 s after the stop the run was still inside it, its lease
held; the CronJob SIGKILLs after 60 s, leaving the lease held until its ttl).

README (The sync worker): "SIGTERM: the worker stops taking users, releases the leases it
holds, and exits 143"; and GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT: a whole Connect API GET, its
retries and the answer's body included, ends within that bound however slowly the answer
arrives, as Garmin not answering in time (the user FAILED, tried again later), never as a
rejected session; a stop cuts it at once. A download within the bound is not cut.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.connect_api import ConnectApi
from garmin_client.env import ConfigError, EnvReader
from garmin_client.errors import Unavailable
from garmin_emulator import ACTIVITIES_PATH, GarminEmulator
from sync_worker import cli
from sync_worker.config import ENV_PREFIX, WorkerConfig
from sync_worker.control import RunControl
from tests.fixtures.http_servers import QuietHandler, serving
from tests.fixtures.servers import Replica
from tests.upstream.test_call_deadline import BODY, FILE_PATH, TIMEOUT, _settings, trickling
from tests.worker import (
    WORKER_TOKEN,
    WorkerRun,
    connect,
    make_config,
    run_worker,
    status,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

# Well within the worker's per-read timeout (make_config: 2 s).
BYTE_EVERY = 0.5


@pytest.fixture
def backend() -> str:
    return "sqlite"


class _Trickling(ThreadingHTTPServer):
    """Garmin's edge in front of the emulator: the activity list's body one byte at a time."""

    def __init__(self, garmin_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = urlsplit(garmin_url).netloc
        self.trickling = threading.Event()
        self.release = threading.Event()


class _Handler(QuietHandler):
    server: _Trickling

    def do_GET(self) -> None:
        connection = http.client.HTTPConnection(self.server.upstream, timeout=5)
        try:
            connection.request("GET", self.path, headers=dict(self.headers))
            answer = connection.getresponse()
            body = answer.read()
        finally:
            connection.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if urlsplit(self.path).path != ACTIVITIES_PATH or self.server.release.is_set():
            self.wfile.write(body)
            return
        self.server.trickling.set()
        try:
            for index in range(len(body)):
                if self.server.release.is_set():
                    self.wfile.write(body[index:])
                    return
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
                time.sleep(BYTE_EVERY)
        except OSError:
            pass  # the worker gave up on the answer


@pytest.fixture
def trickling_edge(garmin: GarminEmulator) -> Iterator[_Trickling]:
    with serving(_Trickling(garmin.url)) as server:
        assert isinstance(server, _Trickling)
        try:
            yield server
        finally:
            server.release.set()


def _behind(config: WorkerConfig, edge: _Trickling) -> WorkerConfig:
    url = f"http://127.0.0.1:{edge.server_address[1]}"
    upstream = replace(config.sync.upstream, base_url=url)
    return replace(config, sync=replace(config.sync, upstream=upstream))


def test_a_stop_request_is_honoured_while_an_answer_trickles_in(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, trickling_edge: _Trickling
) -> None:
    """With the default bound (5 minutes): the stop itself cuts the read."""
    connect(service, garmin, "slow", activities=5)
    config = _behind(make_config(service.target, garmin, tmp_path, users=("slow",)), trickling_edge)
    control = RunControl()
    finished: list[WorkerRun] = []
    worker = threading.Thread(
        target=lambda: finished.append(run_worker(config, control=control)), daemon=True
    )
    worker.start()
    try:
        wait_until(trickling_edge.trickling.is_set, 20, "the list to start trickling")
        time.sleep(1)
        control.request_stop()  # what SIGTERM does
        worker.join(timeout=10)
        stuck = worker.is_alive()
        leased = status(service, "slow").HasField("lease")
    finally:
        trickling_edge.release.set()
        worker.join(timeout=30)
    assert not stuck, (
        "10 s after the stop request the run is still inside the trickling answer "
        f"(the user's lease still held: {leased}); the lease is renewed meanwhile"
    )
    [run] = finished
    assert run.exit_code == 143
    assert run.outcome("slow") == "FAILED"
    assert run.report.garmin_outage is None
    assert not status(service, "slow").HasField("lease")


def test_an_answer_trickling_past_the_bound_fails_the_user_as_garmin_not_answering(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, trickling_edge: _Trickling
) -> None:
    """--max-runtime only stops taking users; the bound (3 s here) ends the one in flight."""
    connect(service, garmin, "slow", activities=5)
    config = make_config(
        service.target,
        garmin,
        tmp_path,
        users=("slow",),
        upstream_retries=0,
        max_runtime=1,
        garmin_call_timeout=3.0,
    )
    started = time.monotonic()

    result = run_worker(_behind(config, trickling_edge))

    elapsed = time.monotonic() - started
    assert trickling_edge.trickling.is_set()
    assert elapsed < 15, f"the run took {elapsed:.1f} s for a 3 s bound"
    assert result.outcome("slow") == "FAILED"
    assert result.report.results[0].detail == "Garmin did not answer in time"
    assert result.exit_code == 1
    after = status(service, "slow")
    assert after.state == pb.SESSION_STATE_ACTIVE  # not a rejected session
    assert not after.HasField("lease")
    assert not after.HasField("synced_through")


@pytest.mark.parametrize("framing", ["length", "close"])
@pytest.mark.parametrize("proxy", [False, True], ids=["direct", "through-a-proxy"])
def test_the_connect_api_client_bounds_a_whole_get_on_either_path(
    monkeypatch: pytest.MonkeyPatch, framing: str, proxy: bool
) -> None:
    """A download arriving steadily within the bound is read whole; one trickling past it
    fails as Garmin not answering in time (a body ended by closing is not taken as whole);
    a set `cancel` ends a call at once."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxy:
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the routed base URL bypasses it
    with trickling(framing=framing, trickle_seconds=2.0) as url:
        with ConnectApi(_settings(url), "garmin.com", call_seconds=4.0) as api:
            assert api.download(FILE_PATH, "token") == BODY
        with ConnectApi(_settings(url), "garmin.com", call_seconds=1.0) as api:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="did not answer in time"):
                api.download(FILE_PATH, "token")
            assert time.monotonic() - started < 1.8
        cancel = threading.Event()
        with ConnectApi(_settings(url), "garmin.com", call_seconds=300, cancel=cancel) as api:
            threading.Timer(0.5, cancel.set).start()
            started = time.monotonic()
            with pytest.raises(Unavailable, match="did not answer in time"):
                api.download(FILE_PATH, "token")
            assert time.monotonic() - started < 1.3


def test_the_bound_never_cuts_the_retry_budget() -> None:
    """A bound below timeout x attempts (here 0.1 s against 0.5 s x 3) is raised to it."""
    with (
        trickling(trickle_seconds=3 * TIMEOUT - 0.6) as url,
        ConnectApi(_settings(url, retries=2), "garmin.com", call_seconds=0.1) as api,
    ):
        assert api.download(FILE_PATH, "token") == BODY


@pytest.mark.parametrize(("value", "seconds"), [(None, 300.0), ("45", 45.0)])
def test_the_bound_is_read_from_the_environment(value: str | None, seconds: float) -> None:
    env = {"GARMIN_SYNC_AUTH_TOKEN": WORKER_TOKEN}
    if value is not None:
        env["GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT"] = value
    args = cli._parser().parse_args(["run", "--all", "--out", "x"])

    config = cli._config(args, EnvReader(env, ENV_PREFIX))

    assert config.sync.garmin_call_timeout == seconds


@pytest.mark.parametrize("value", ["0", "3601", "soon"])
def test_a_bound_out_of_range_is_a_configuration_error_naming_it(value: str) -> None:
    args = cli._parser().parse_args(["run", "--all", "--out", "x"])
    env = EnvReader(
        {"GARMIN_SYNC_AUTH_TOKEN": WORKER_TOKEN, "GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT": value},
        ENV_PREFIX,
    )

    with pytest.raises(ConfigError, match="GARMIN_SYNC_UPSTREAM_CALL_TIMEOUT"):
        cli._config(args, env)
