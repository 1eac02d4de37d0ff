"""A refresh claim outlives the Garmin call it covers (RefreshSettings.claim_lifetime_seconds:
"only a claim whose holder died ever expires"). The claim is sized from the upstream timeout
(timeout x attempts + a margin: config._refresh), on UpstreamSettings' promise that one call
gets at most (retries + 1) times the timeout.

That promise did not hold: requests' timeout bounds each read, and a non-streamed body was
read after the transport returned. An answer that trickled in (a byte every 0.2 s) kept the
call going past its claim: another replica's keep-alive claimed the session and sent the
refresh token Garmin had just rotated (a reuse), read invalid_grant with the row unchanged and
ended the session. Now the transport cuts the call at its budget (garmin_client.call_deadline):
the first replica's call ends as timed out, well inside its claim, and releases it.

Settings are scaled down (timeout 0.5 s, margin 1 s, commit retry 1 s) so the test takes
seconds.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import SystemClock
from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.models import SessionState
from auth_service.domain.policies import RefreshSettings
from auth_service.storage.secrets import SecretBox
from garmin_client.settings import UpstreamSettings
from garmin_emulator import GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.http_servers import QuietHandler, serving
from tests.leases import read_row

from . import ASKER, DiAccounts, build_replica
from .conftest import CONSUMER_KEY, CONSUMER_SECRET

pytestmark = pytest.mark.timeout(90)

TIMEOUT = 0.5  # UPSTREAM_TIMEOUT, retries 0: one call's promised worst case is 0.5 s
# As config._refresh builds it: timeout x attempts + a margin (30 s there, 1 s here).
SCALED = RefreshSettings(
    concurrency=4,
    claim_seconds=TIMEOUT + 1.0,
    wait_seconds=TIMEOUT + 2.0,
    commit_retry_seconds=1.0,
)
TRICKLE_GAP = 0.2  # well inside the read timeout: the socket never times out
TRICKLE_SECONDS = 6.0


class TricklingProxy:
    """Forwards every request to the emulator at once (Garmin acts on it at once) and hands
    the answer back a byte at a time, TRICKLE_GAP apart, for TRICKLE_SECONDS."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        self.answered = threading.Event()

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(host, port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request("POST", self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in {"connection", "transfer-encoding", "content-length"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.flush()
                deadline = time.monotonic() + TRICKLE_SECONDS
                sent = 0
                while sent < len(data) - 1 and time.monotonic() < deadline:
                    self.wfile.write(data[sent : sent + 1])
                    self.wfile.flush()
                    sent += 1
                    time.sleep(TRICKLE_GAP)
                self.wfile.write(data[sent:])
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def trickling(emulator: GarminEmulator) -> Iterator[TricklingProxy]:
    proxy = TricklingProxy(emulator.url)
    with serving(proxy.server):
        yield proxy


def test_a_trickling_refresh_answer_ends_within_the_claim(
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    clock = SystemClock()
    accounts = DiAccounts(emulator, clock, db_sessionmaker, box)
    # Due for keep-alive (its refresh token dies within the window), nobody leasing it.
    accounts.seed("trickle", refresh_in=timedelta(days=3))
    version = read_row(db_sessionmaker, "trickle").session_version

    with trickling(emulator) as proxy:
        slow_upstream = both_providers(
            UpstreamSettings(
                consumer_key=CONSUMER_KEY,
                consumer_secret=CONSUMER_SECRET,
                base_url=proxy.url,
                timeout_seconds=TIMEOUT,
                retries=0,
            )
        )
        first = build_replica(db_sessionmaker, box, slow_upstream, clock, SCALED)
        started = time.monotonic()
        with pytest.raises(GarminUnavailable):
            first.refresher.refresh("trickle", version, ASKER)
        took = time.monotonic() - started
        # Meanwhile no other replica could have claimed it: the call ended inside its claim.
        assert took < SCALED.claim_lifetime_seconds, (
            f"the refresh call took {took:.1f} s against a claim of "
            f"{SCALED.claim_lifetime_seconds:.1f} s, sized for a {TIMEOUT} s call"
        )
        assert took < TIMEOUT + 0.5
        # Released at once (Garmin unavailable), the session as it was: ACTIVE, same version.
        row = read_row(db_sessionmaker, "trickle")
        assert (row.state, row.session_version) == (SessionState.ACTIVE, version)
        assert row.refresh_claimed_until is None
    assert accounts.reuses("trickle") == 0
