"""A PostgreSQL sink statement that cannot go on ends the user, not the run.

Found by review: the sink had only a connect timeout. A lock on `garmin_activity` (an
operator's ALTER TABLE or VACUUM FULL) or a sink server that stopped answering held the sync
thread for ever, the keeper went on renewing the user's lease (nobody else could sync the
user), and a SIGTERM'd run never exited. Now its connections carry a lock timeout (10 s), a
statement timeout (30 s) and TCP keepalives: the user ends FAILED and is released.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from urllib.parse import quote

import psycopg
import pytest

from garmin_emulator import GarminEmulator
from sync_worker.postgres_sink import (
    LOCK_TIMEOUT_MS,
    STATEMENT_TIMEOUT_MS,
    PostgresSink,
    _connection_settings,
)
from tests.fixtures.servers import Replica
from tests.worker import WorkerRun, connect, make_config, run_worker, status

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the auth service's database plays no part


def test_a_sink_statement_stuck_behind_a_lock_fails_the_user_and_releases_it(
    service: Replica, garmin: GarminEmulator, sink_url: str
) -> None:
    user = "pia"
    connect(service, garmin, user, activities=2)
    config = make_config(
        service.target,
        garmin,
        None,
        users=(user,),
        sink_url=sink_url,
        lease_ttl=timedelta(seconds=5),
    )
    runs: list[WorkerRun] = []
    blocker = psycopg.connect(sink_url)
    blocker.execute("LOCK TABLE garmin_activity IN ACCESS EXCLUSIVE MODE")
    worker = threading.Thread(target=lambda: runs.append(run_worker(config)))
    started = time.monotonic()
    try:
        worker.start()
        worker.join(LOCK_TIMEOUT_MS / 1000 + 15)
        finished, seconds = not worker.is_alive(), time.monotonic() - started
    finally:
        blocker.close()  # lets a stuck statement through
        worker.join(30)
    assert finished, f"the run was still blocked in the sink's statement after {seconds:.0f} s"
    assert runs[0].users[user]["outcome"] == "FAILED"
    assert status(service, user).HasField("lease") is False  # released, not held to its ttl


def test_the_sink_connections_carry_the_timeouts(sink_url: str) -> None:
    sink = PostgresSink(sink_url)
    with sink._connect() as connection:
        shown = {
            name: connection.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("statement_timeout", "lock_timeout")
        }
        libpq = {
            option.keyword.decode(): (option.val or b"").decode()
            for option in connection.pgconn.info
        }
    assert shown == {
        "statement_timeout": f"{STATEMENT_TIMEOUT_MS // 1000}s",
        "lock_timeout": f"{LOCK_TIMEOUT_MS // 1000}s",
    }
    assert libpq["keepalives"] == "1"
    assert libpq["tcp_user_timeout"] == "30000"


def _shown(sink: PostgresSink, *names: str) -> tuple[str, ...]:
    with sink._connect() as connection:
        return tuple(
            str(connection.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in names
        )


def test_the_urls_own_timeouts_win(sink_url: str) -> None:
    """Found by review: our limits went after the URL's options, and the last one wins."""
    options = quote("-c statement_timeout=120000 -c lock_timeout=60000")
    sink = PostgresSink(f"{sink_url}?options={options}")
    assert _shown(sink, "statement_timeout", "lock_timeout") == ("2min", "1min")


def test_a_zero_the_url_sets_on_purpose_is_kept(sink_url: str) -> None:
    """Found by review: 0 ("no limit") set on purpose read as unset and was replaced."""
    options = quote("-c statement_timeout=0 -c lock_timeout=0")
    sink = PostgresSink(f"{sink_url}?options={options}")
    assert _shown(sink, "statement_timeout", "lock_timeout") == ("0", "0")


def test_pgoptions_is_kept_and_its_timeouts_win(
    sink_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: an `options` startup keyword made libpq ignore PGOPTIONS (and a
    service file's options): a search_path set there was lost."""
    monkeypatch.setenv("PGOPTIONS", "-c search_path=garmin_sync,public -c lock_timeout=3000")
    sink = PostgresSink(sink_url)
    assert _shown(sink, "search_path", "lock_timeout", "statement_timeout") == (
        "garmin_sync,public",
        "3s",
        f"{STATEMENT_TIMEOUT_MS // 1000}s",
    )


def test_the_urls_own_tcp_settings_are_kept() -> None:
    settings = _connection_settings("postgresql://sync@db/sink?keepalives_idle=99")
    assert "keepalives_idle" not in settings  # the URL's 99 stands
    assert settings["tcp_user_timeout"] == "30000"
    assert _connection_settings("postgresql://sync@db/sink?service=garmin") == {}
