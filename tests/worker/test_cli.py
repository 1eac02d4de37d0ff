"""The real console script in a subprocess: exit codes, output, SIGTERM and SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from auth_service.crypto import Keyring
from garmin_client.env import EnvReader
from garmin_emulator import ACTIVITIES_PATH, DOWNLOAD_PREFIX, GarminEmulator
from sync_worker import cli, runner
from sync_worker.client import AuthClient, AuthClientConfig
from sync_worker.config import ENV_PREFIX
from sync_worker.postgres_sink import libpq_url
from tests.fixtures.database import PostgresServer
from tests.fixtures.servers import CONSUMER_SECRET, Replica

from . import (
    WORKER_SCRIPT,
    WORKER_TOKEN,
    activity_files,
    connect,
    make_config,
    run_worker,
    status,
    stored_tokens,
    summaries,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend() -> str:
    """The auth service's database: SQLite only in this module (the worker is under test)."""
    return "sqlite"


def worker(
    env: dict[str, str], *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WORKER_SCRIPT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [WORKER_SCRIPT, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# --- exit codes 2 and 3 -----------------------------------------------------------------


@pytest.fixture
def main_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """`garmin-sync-worker` in this process (fast); the logging setup it installs is undone."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def call(env: dict[str, str], *args: str) -> tuple[int, str, str]:
        for name in [name for name in os.environ if name.startswith("GARMIN_SYNC_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield call
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("args", "drop", "mentions"),
    [
        (["run", "--user", "a", "--out", "x"], "GARMIN_SYNC_AUTH_TOKEN", "AUTH_TOKEN"),
        (["run", "--user", "a", "--all", "--out", "x"], None, "--all"),
        (["run", "--out", "x"], None, "--all"),
        (["run", "--all"], None, "--out"),
        (["run", "--user", "../etc", "--out", "x"], None, "--user"),
        (["run", "--all", "--out", "x", "--max-runtime", "5x"], None, "--max-runtime"),
        (["run", "--all", "--with-files", "--sink", "postgresql://h/db"], None, "--with-files"),
        (["run", "--all", "--sink", "mysql://h/db"], None, "postgresql://"),
        (["run", "--all", "--out", "x", "--lease-ttl", "1s"], None, "--lease-ttl"),
        (["run", "--all", "--out", "x", "--concurrency", "0"], None, "--concurrency"),
        # Before: an OverflowError traceback (exit 1), and nan/inf ran into exit 3.
        (["run", "--all", "--out", "x", "--max-runtime", "99999999999999d"], None, "--max"),
        (["run", "--all", "--out", "x", "--rpc-timeout", "nan"], None, "--rpc-timeout"),
        # The service's own limit: above it every LeaseNextSession was refused, exit 0.
        (["run", "--all", "--out", "x", "--min-sync-interval", "31d"], None, "--min-sync"),
        (["run", "--all", "--out", "x", "--rpc-timeout", "inf"], None, "--rpc-timeout"),
        # Before: silently hostname:pid (found by review).
        (["run", "--all", "--out", "x", "--holder", ""], None, "--holder"),
        (["frobnicate"], None, "invalid choice"),
    ],
    ids=[
        "no-auth-token",
        "user-and-all",
        "neither",
        "no-sink",
        "unsafe-user",
        "bad-duration",
        "files-in-postgres",
        "not-postgres",
        "short-ttl",
        "no-concurrency",
        "huge-duration",
        "nan-timeout",
        "min-sync-interval-over-30d",
        "inf-timeout",
        "empty-holder",
        "unknown-command",
    ],
)
def test_usage_and_configuration_errors_exit_2_with_one_line(
    garmin: GarminEmulator,
    main_in_process: Callable[..., tuple[int, str, str]],
    args: list[str],
    drop: str | None,
    mentions: str,
) -> None:
    env = worker_env("127.0.0.1:1", garmin)
    if drop:
        del env[drop]
    code, out, err = main_in_process(
        {name: value for name, value in env.items() if name.startswith("GARMIN_SYNC_")}, *args
    )
    assert code == 2
    line = one_line(err)
    assert line.startswith("garmin-sync-worker: ")
    assert mentions in line
    assert out == ""


@pytest.mark.parametrize(
    ("flags", "rpc_timeout", "progress_interval"),
    [
        ([], 30.0, 30.0),
        (["--rpc-timeout", "30s", "--progress-interval", "2m"], 30.0, 120.0),
        (["--rpc-timeout", "45", "--progress-interval", "0.5"], 45.0, 1.0),
    ],
    ids=["defaults", "durations", "bare-seconds"],
)
def test_timeouts_are_durations_as_the_readme_writes_them(
    garmin: GarminEmulator, flags: list[str], rpc_timeout: float, progress_interval: float
) -> None:
    """README: '--rpc-timeout' defaults to '30s', and durations are written like 90s, 15m.
    Before, both flags took a bare float: '--rpc-timeout 30s' was a usage error (exit 2)."""
    env = worker_env("127.0.0.1:1", garmin)
    args = cli._parser().parse_args(["run", "--all", "--out", "x", *flags])
    reader = EnvReader({k: v for k, v in env.items() if k.startswith("GARMIN_SYNC_")}, ENV_PREFIX)

    config = cli._config(args, reader)

    assert config.auth.timeout_seconds == rpc_timeout
    assert config.progress_interval == progress_interval


@pytest.mark.parametrize(
    ("flags", "env_value", "seconds"),
    [
        ([], None, 3600.0),
        ([], "10m", 600.0),
        (["--rate-limit-max-wait", "90s"], "10m", 90.0),
        (["--rate-limit-max-wait", "2h"], None, 7200.0),
    ],
    ids=["default", "env", "flag-wins", "flag"],
)
def test_the_rate_limit_cap_is_a_flag_or_a_variable(
    garmin: GarminEmulator, flags: list[str], env_value: str | None, seconds: float
) -> None:
    """--rate-limit-max-wait (else GARMIN_SYNC_RATE_LIMIT_MAX_WAIT, else 1h) caps the pause a
    Garmin Retry-After imposes on a run. Before, there was no cap: a year's header parked it."""
    env = {k: v for k, v in worker_env("127.0.0.1:1", garmin).items() if k.startswith(ENV_PREFIX)}
    if env_value is not None:
        env["GARMIN_SYNC_RATE_LIMIT_MAX_WAIT"] = env_value
    args = cli._parser().parse_args(["run", "--all", "--out", "x", *flags])

    config = cli._config(args, EnvReader(env, ENV_PREFIX))

    assert config.rate_limit_max_wait == seconds


@pytest.mark.parametrize(
    ("flags", "env_value", "mentions"),
    [
        (["--rate-limit-max-wait", "8d"], None, "--rate-limit-max-wait: must be between 1s and 7d"),
        (["--rate-limit-max-wait", "0"], None, "--rate-limit-max-wait: must be between 1s and 7d"),
        ([], "0.5", "GARMIN_SYNC_RATE_LIMIT_MAX_WAIT: must be between 1s and 7d"),
        ([], "soon", "GARMIN_SYNC_RATE_LIMIT_MAX_WAIT: expected a duration"),
    ],
    ids=["flag-too-long", "flag-zero", "env-too-short", "env-not-a-duration"],
)
def test_a_rate_limit_cap_out_of_range_exits_2_naming_it(
    garmin: GarminEmulator,
    main_in_process: Callable[..., tuple[int, str, str]],
    flags: list[str],
    env_value: str | None,
    mentions: str,
) -> None:
    env = {k: v for k, v in worker_env("127.0.0.1:1", garmin).items() if k.startswith(ENV_PREFIX)}
    if env_value is not None:
        env["GARMIN_SYNC_RATE_LIMIT_MAX_WAIT"] = env_value

    code, out, err = main_in_process(env, "run", "--all", "--out", "x", *flags)

    assert code == 2
    assert mentions in one_line(err)
    assert out == ""


@pytest.mark.parametrize(
    ("tls_env", "mentions"),
    [
        ({"GARMIN_SYNC_TLS_CA": "/nonexistent/ca.pem"}, "GARMIN_SYNC_TLS_CA"),
        ({"GARMIN_SYNC_TLS_CERT": "{file}", "GARMIN_SYNC_TLS_KEY": "{file}"}, "TLS_CA"),
        ({"GARMIN_SYNC_TLS_CA": "{file}", "GARMIN_SYNC_TLS_CERT": "{file}"}, "_KEY"),
    ],
    ids=["missing-ca", "cert-without-ca", "cert-without-key"],
)
def test_tls_settings_are_checked(
    garmin: GarminEmulator,
    tmp_path: Path,
    main_in_process: Callable[..., tuple[int, str, str]],
    tls_env: dict[str, str],
    mentions: str,
) -> None:
    pem = tmp_path / "some.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        name: value
        for name, value in worker_env("127.0.0.1:1", garmin).items()
        if name.startswith("GARMIN_SYNC_")
    }
    env.update({name: value.format(file=pem) for name, value in tls_env.items()})
    code, _, err = main_in_process(env, "run", "--all", "--out", str(tmp_path))
    assert code == 2
    assert mentions in one_line(err)


def test_the_console_script_exits_2_on_a_configuration_error(garmin: GarminEmulator) -> None:
    env = worker_env("127.0.0.1:1", garmin)
    del env["GARMIN_SYNC_AUTH_TOKEN"]
    result = worker(env, "run", "--user", "a", "--out", "x")
    assert result.returncode == 2
    assert "GARMIN_SYNC_AUTH_TOKEN: is required" in one_line(result.stderr)
    assert result.stdout == ""


def test_an_unreachable_auth_service_exits_3(garmin: GarminEmulator, tmp_path: Path) -> None:
    result = worker(worker_env("127.0.0.1:1", garmin), "run", "--all", "--out", str(tmp_path))
    assert result.returncode == 3
    assert "the auth service at 127.0.0.1:1 is unreachable" in result.stderr
    assert json_lines(result.stdout)[-1]["users"] == 0


def test_refused_credentials_exit_3(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    env = worker_env(service.target, garmin, GARMIN_SYNC_AUTH_TOKEN="wrong-token-0123456789abc")
    result = worker(env, "run", "--all", "--out", str(tmp_path))
    assert result.returncode == 3
    assert "refuses the worker's credentials (UNAUTHENTICATED CALLER_UNAUTHENTICATED)" in (
        result.stderr
    )
    assert "wrong-token" not in result.stderr


def test_a_garmin_outage_exits_4_with_one_clear_line(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    for user in ("oli", "pia"):
        connect(service, garmin, user, activities=1)
    garmin.fail_next(ACTIVITIES_PATH, 503, count=1000)
    env = worker_env(service.target, garmin)
    result = worker(
        env, "run", "--all", "--concurrency", "1", "--max-garmin-unavailable", "1",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 4
    assert "Garmin was unavailable for 1 user(s) in a row" in result.stderr
    assert "stopped taking users (exit 4)" in result.stderr
    assert json_lines(result.stdout)[-1]["users"] == 1


@pytest.mark.parametrize("token", ["wörker-token", "abc\udcffdef"], ids=["non-ascii", "not-utf8"])
def test_a_drain_that_gives_up_on_lease_next_session_exits_1_with_one_clear_line(
    service: Replica,
    garmin: GarminEmulator,
    tmp_path: Path,
    main_in_process: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
    token: str,
) -> None:
    """Every LeaseNextSession fails INTERNAL: the client holds a token gRPC refuses to send
    in a header (the configuration refuses such a token since, so the client is given it
    behind the configuration's back). Before: exit 0, as if nothing were due, and no line but
    the per-call warnings; and for a token gRPC cannot even encode (a lone surrogate), every
    sync thread died of the UnicodeEncodeError the client let through, with its traceback."""

    class UnsendableToken(AuthClient):
        def __init__(self, config: AuthClientConfig) -> None:
            super().__init__(dataclasses.replace(config, token=token))

    monkeypatch.setattr(runner, "AuthClient", UnsendableToken)
    connect(service, garmin, "vic", activities=1)
    env = {k: v for k, v in worker_env(service.target, garmin).items() if k.startswith(ENV_PREFIX)}
    code, out, err = main_in_process(
        env, "run", "--all", "--concurrency", "1", "--out", str(tmp_path)
    )
    assert code == 1, err
    assert "Traceback" not in err
    gave_up = [line for line in err.splitlines() if "(exit 1)" in line]
    assert len(gave_up) == 1, err
    assert "LeaseNextSession failed 3 times in a row (last: INTERNAL" in gave_up[0]
    assert token not in err
    assert json_lines(out)[-1]["users"] == 0


# --- a whole run ------------------------------------------------------------------------


def test_a_run_prints_one_line_per_user_and_never_a_secret(
    service: Replica,
    garmin: GarminEmulator,
    tmp_path: Path,
    database_url: str,
    keyring: Keyring,
) -> None:
    email = connect(service, garmin, "lia", activities=3)
    connect(service, garmin, "max", activities=1)
    before = stored_tokens(database_url, keyring, "lia")
    # garth refreshes during the run, so new tokens pass through the worker too.
    garmin.expire_access_tokens(email)
    env = worker_env(service.target, garmin, GARMIN_SYNC_LOG_LEVEL="DEBUG")

    result = worker(
        env, "run", "--user", "lia", "--user", "max", "--out", str(tmp_path), "--with-files"
    )

    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert [line.get("user_id") for line in lines] == ["lia", "max", None] or [
        line.get("user_id") for line in lines
    ] == ["max", "lia", None]
    by_user = {line["user_id"]: line for line in lines[:-1]}
    assert by_user["lia"]["outcome"] == "SYNCED"
    assert by_user["lia"]["refreshed"] is True
    assert by_user["lia"]["items"] == 3
    assert lines[-1]["summary"]["SYNCED"] == 2
    assert lines[-1]["users"] == 2
    after = stored_tokens(database_url, keyring, "lia")
    assert before is not None
    assert after is not None
    secrets = {
        WORKER_TOKEN,
        CONSUMER_SECRET,
        before.oauth1_token().oauth_token,
        before.oauth1_token().oauth_token_secret,
        before.oauth2.access_token,
        before.oauth2.refresh_token,
        after.oauth2.access_token,
        after.oauth2.refresh_token,
    }
    for secret in secrets:
        assert secret not in result.stdout
        assert secret not in result.stderr
    assert len(activity_files(tmp_path, "lia")) == 6


def test_sigterm_mid_run_releases_every_lease_and_exits_143(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    users = ["nia", "oto", "pam"]
    for user in users:
        connect(service, garmin, user, activities=4)
    garmin.fail_next(DOWNLOAD_PREFIX, None, count=1000, delay=0.5)
    env = worker_env(service.target, garmin)
    process = start_worker(
        env,
        "run",
        *[arg for user in users for arg in ("--user", user)],
        "--out",
        str(tmp_path),
        "--with-files",
        "--concurrency",
        "2",
        "--lease-ttl",
        "30s",
    )
    try:
        # A user's first write comes just before its release, and with two slots for three
        # users there is a moment when neither slot holds a lease; so wait for both a write
        # and a held lease (the third user's downloads hold its lease for at least 0.5 s).
        wait_until(
            lambda: (
                any(summaries(tmp_path, user) for user in users if (tmp_path / user).exists())
                and any(status(service, user).HasField("lease") for user in users)
            ),
            30,
            "a first write while a lease is held",
        )
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
        process.wait()

    assert process.returncode == 143, stderr
    assert time.monotonic() - sent < 10
    lines = json_lines(stdout)
    assert "summary" in lines[-1]
    assert {line["outcome"] for line in lines[:-1]} <= {"FAILED", "SYNCED", "NOTHING_NEW"}
    for user in users:
        assert not status(service, user).HasField("lease"), user
    # The third user was never taken: its session was not even attempted.
    untouched = [
        user for user in users if not status(service, user).HasField("last_sync_attempt_at")
    ]
    assert len(untouched) == len(users) - (len(lines) - 1)


def test_a_crash_between_write_and_release_reruns_cleanly(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    email = connect(service, garmin, "kim")
    ids = {activity["activityId"] for activity in garmin.add_activities(email, 6)}
    garmin.fail_next(DOWNLOAD_PREFIX, None, count=1000, delay=0.5)
    env = worker_env(service.target, garmin)
    process = start_worker(
        env, "run", "--user", "kim", "--out", str(tmp_path), "--with-files", "--lease-ttl", "5s"
    )
    activities = tmp_path / "kim" / "activities"
    try:
        # Written to their temporary files (the original files one by one, as downloaded;
        # the page's summaries after them); put in place only by the sink's commit.
        wait_until(lambda: len(list(activities.glob(".*.zip.tmp"))) >= 2, 30, "two items")
    finally:
        process.kill()  # SIGKILL: no commit, no release, no cleanup
        process.communicate()
    assert summaries(tmp_path, "kim") == {}
    crashed = status(service, "kim")
    assert crashed.HasField("lease")
    assert not crashed.HasField("synced_through")

    garmin.clear_faults()
    wait_until(lambda: not status(service, "kim").HasField("lease"), 10, "the lease to expire")
    rerun = run_worker(
        make_config(service.target, garmin, tmp_path, users=("kim",), with_files=True)
    )

    assert rerun.outcome("kim") == "SYNCED"
    assert rerun.users["kim"]["items"] == 6
    # The crashed run's temporary files were written again and renamed: none is left.
    stored = activity_files(tmp_path, "kim")
    assert sorted(stored) == sorted([f"{i}.json" for i in ids] + [f"{i}.zip" for i in ids])
    for activity_id in ids:
        zip_path = tmp_path / "kim" / "activities" / f"{activity_id}.zip"
        assert zip_path.read_bytes() == garmin.activity_file(activity_id)
    assert status(service, "kim").HasField("synced_through")


# --- the PostgreSQL sink through the CLI ------------------------------------------------


def test_init_sink_is_idempotent_and_run_writes_into_postgres(
    service: Replica,
    garmin: GarminEmulator,
    pg_server: PostgresServer,
    main_in_process: Callable[..., tuple[int, str, str]],
) -> None:
    url = pg_server.create_database().replace("postgres@", "postgres:hunter2@")
    env = {
        name: value
        for name, value in worker_env(service.target, garmin, GARMIN_SYNC_SINK=url).items()
        if name.startswith("GARMIN_SYNC_")
    }
    try:
        # Before init-sink: refused with a hint, and without the URL's password.
        code, out, err = main_in_process(env, "run", "--all")
        assert code == 2
        assert "init-sink" in one_line(err)
        assert "hunter2" not in err
        assert out == ""
        init = worker(worker_env(service.target, garmin, GARMIN_SYNC_SINK=url), "init-sink")
        assert init.returncode == 0, init.stderr
        assert "hunter2" not in init.stdout + init.stderr
        code, out, _ = main_in_process(env, "init-sink")
        assert code == 0
        assert "is ready" in out
        connect(service, garmin, "quin", activities=3)
        config = make_config(service.target, garmin, None, users=("quin",), sink_url=url)

        first = run_worker(config)
        second = run_worker(config)

        assert first.users["quin"]["items"] == 3
        assert second.outcome("quin") == "NOTHING_NEW"
        with psycopg.connect(libpq_url(url)) as connection:
            rows = connection.execute(
                "SELECT activity_id, summary->>'ownerDisplayName', start_time_gmt, fencing_token"
                " FROM garmin_activity WHERE user_id = 'quin'"
            ).fetchall()
        assert len(rows) == 3
        assert {row[1] for row in rows} == {"quin"}
        assert all(row[2] is not None for row in rows)
        # Still the first run's fencing token: the second run wrote nothing.
        assert {row[3] for row in rows} == {1}
    finally:
        pg_server.drop_database(url)


def test_init_sink_on_a_database_that_refuses_create_is_one_line_exit_2(
    garmin: GarminEmulator, pg_server: PostgresServer
) -> None:
    """A read-only session (as a read-only server, or a role without CREATE, refuses the
    tables). Before: psycopg's ReadOnlySqlTransaction escaped as a traceback, exit 1."""
    url = pg_server.create_database().replace("postgres@", "postgres:hunter2@")
    read_only = libpq_url(url) + "?options=-c%20default_transaction_read_only%3Don"
    try:
        result = worker(worker_env("127.0.0.1:1", garmin), "init-sink", "--sink", read_only)
    finally:
        pg_server.drop_database(url)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "sink error" in line
    assert "read-only transaction" in line
    assert "hunter2" not in result.stdout + result.stderr
