"""The `garmin-auth-service` command as an operator runs it: configuration errors, start-up,
graceful stop on SIGTERM, migrations, and the demo."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.config import load_settings
from auth_service.crypto import Keyring
from auth_service.domain.policies import (
    ANDROID_SERVICE_URL,
    IOS_SERVICE_URL,
    DiSettings,
    LoginFlow,
    RefusedClientId,
)
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_client.env import ConfigError
from garmin_emulator import GarminEmulator
from tests.fixtures.emulators import scanned_emulator
from tests.fixtures.servers import CONSUMER_KEY, CONSUMER_SECRET, ROLE_TOKENS, write_callers_file

CLI = str(Path(sys.executable).parent / "garmin-auth-service")


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GARMIN_AUTH_")}
    env.update(
        {
            "GARMIN_AUTH_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "GARMIN_AUTH_ENCRYPTION_KEYS": Keyring.generate_key_value("k1"),
            "GARMIN_AUTH_CALLERS_FILE": str(write_callers_file(tmp_path / "callers.toml")),
            "GARMIN_AUTH_OAUTH_CONSUMER_KEY": CONSUMER_KEY,
            "GARMIN_AUTH_OAUTH_CONSUMER_SECRET": CONSUMER_SECRET,
        }
    )
    env.update(overrides)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("GARMIN_AUTH_ENCRYPTION_KEYS", "", "GARMIN_AUTH_ENCRYPTION_KEYS: is required"),
        ("GARMIN_AUTH_ENCRYPTION_KEYS", "k1:c2hvcnQ=", "GARMIN_AUTH_ENCRYPTION_KEYS"),
        ("GARMIN_AUTH_OAUTH_CONSUMER_KEY", "", "GARMIN_AUTH_OAUTH_CONSUMER_KEY: is required"),
        ("GARMIN_AUTH_DATABASE_URL", "mysql://x/y", "GARMIN_AUTH_DATABASE_URL"),
        ("GARMIN_AUTH_LISTEN", "nonsense", "GARMIN_AUTH_LISTEN"),
        ("GARMIN_AUTH_LEASE_MAX_TTL", "soon", "GARMIN_AUTH_LEASE_MAX_TTL"),
        ("GARMIN_AUTH_UPSTREAM_URL", "ftp://x", "GARMIN_AUTH_UPSTREAM_URL"),
        ("GARMIN_AUTH_HOUSEKEEPING_INTERVAL", "0", "GARMIN_AUTH_HOUSEKEEPING_INTERVAL"),
        ("GARMIN_AUTH_CALLERS_FILE", "", "GARMIN_AUTH_CALLERS_FILE: is required"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    result = run_cli("serve", env=base_env(tmp_path, **{variable: value}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_malformed_key_is_never_echoed(tmp_path: Path) -> None:
    key = Keyring.generate_key_value("k1").split(":", 1)[1]
    result = run_cli("serve", env=base_env(tmp_path, GARMIN_AUTH_ENCRYPTION_KEYS=f"{key}:"))
    assert result.returncode == 2
    assert key not in result.stderr


def test_development_flag_allows_running_without_callers_file() -> None:
    env = {
        "GARMIN_AUTH_ENCRYPTION_KEYS": Keyring.generate_key_value("k1"),
        "GARMIN_AUTH_OAUTH_CONSUMER_KEY": "k",
        "GARMIN_AUTH_OAUTH_CONSUMER_SECRET": "s",
        "GARMIN_AUTH_ALLOW_UNAUTHENTICATED": "true",
    }
    settings = load_settings(env)
    assert settings.callers_file is None
    assert settings.allow_unauthenticated
    with pytest.raises(ConfigError, match="GARMIN_AUTH_CALLERS_FILE"):
        load_settings({**env, "GARMIN_AUTH_ALLOW_UNAUTHENTICATED": "false"})


def test_new_logins_take_garmins_di_sign_in_by_default(tmp_path: Path) -> None:
    settings = load_settings(base_env(tmp_path))
    assert settings.login_flow is LoginFlow.DI
    assert settings.di == DiSettings()
    assert settings.login.signin_cooldown_seconds == 7200
    assert settings.login.service_urls[0] == IOS_SERVICE_URL
    custom = {
        **base_env(tmp_path),
        "GARMIN_AUTH_LOGIN_FLOW": "GARTH",
        "GARMIN_AUTH_DI_CLIENT_IDS": "GARMIN_CONNECT_MOBILE_IOS_DI",
        "GARMIN_AUTH_DI_SERVICE_URLS": f"{ANDROID_SERVICE_URL},{IOS_SERVICE_URL}",
        "GARMIN_AUTH_DI_IMPERSONATE": "chrome",
        "GARMIN_AUTH_DI_PLAIN_HTTP": "1",
        "GARMIN_AUTH_DI_ON_REFUSED_CLIENT_ID": "next",
    }
    settings = load_settings(custom)
    assert settings.login_flow is LoginFlow.GARTH
    assert settings.di == DiSettings(
        client_ids=("GARMIN_CONNECT_MOBILE_IOS_DI",),
        service_url=ANDROID_SERVICE_URL,
        impersonate="chrome",
        plain_http=True,
        on_refused_client_id=RefusedClientId.NEXT,
    )
    assert settings.login.service_urls == (ANDROID_SERVICE_URL, IOS_SERVICE_URL)


def test_housekeeping_interval_defaults_to_five_minutes(tmp_path: Path) -> None:
    assert load_settings(base_env(tmp_path)).housekeeping_interval_seconds == 300
    custom = base_env(tmp_path, GARMIN_AUTH_HOUSEKEEPING_INTERVAL="30")
    assert load_settings(custom).housekeeping_interval_seconds == 30


def test_settings_repr_holds_no_secret(tmp_path: Path) -> None:
    env = base_env(tmp_path, GARMIN_AUTH_DATABASE_URL="postgresql+psycopg://u:hunter2@db/x")
    text = repr(load_settings(env))
    assert "hunter2" not in text
    assert CONSUMER_SECRET not in text
    assert env["GARMIN_AUTH_ENCRYPTION_KEYS"].split(":")[1] not in text


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    result = run_cli("serve", env=base_env(tmp_path))
    assert result.returncode == 2
    assert "garmin-auth-service migrate" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, GarminEmulator]]:
    with scanned_emulator(consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET) as garmin:
        target = f"127.0.0.1:{free_port()}"
        env = base_env(
            tmp_path,
            GARMIN_AUTH_LISTEN=target,
            GARMIN_AUTH_UPSTREAM_URL=garmin.url,
            GARMIN_AUTH_GRACE_PERIOD="10",
        )
        assert run_cli("migrate", env=env).returncode == 0
        process = subprocess.Popen(
            [CLI, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
            yield process, target, garmin
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def test_sigterm_lets_in_flight_calls_finish_then_exits(
    served: tuple[subprocess.Popen[str], str, GarminEmulator],
) -> None:
    process, target, garmin = served
    garmin.add_user("slow@example.com", "pw")
    garmin.fail_next("/mobile/api/login", None, delay=1.5)  # Garmin answers slowly
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        stub = pb_grpc.GarminAuthServiceStub(channel)
        in_flight = stub.Login.future(
            pb.LoginRequest(user_id="slow", email="slow@example.com", password="pw"),
            metadata=(("authorization", f"Bearer {ROLE_TOKENS['admin']}"),),
            timeout=30,
        )
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        answer = in_flight.result(timeout=30)
        assert answer.outcome == pb.LOGIN_OUTCOME_AUTHENTICATED
    assert process.wait(timeout=30) == 0
    _, stderr = process.communicate()
    assert "stopping gracefully" in stderr


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    first, second = run_cli("migrate", env=env), run_cli("migrate", env=env)
    assert first.returncode == second.returncode == 0
    assert "is at revision" in second.stdout


def test_hash_token_prints_the_callers_file_digest(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "hash-token"],
        input="my-token\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=base_env(tmp_path),
    )
    assert result.stdout.strip() == hashlib.sha256(b"my-token").hexdigest()


def test_demo_runs_end_to_end_on_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}
    env["GARMIN_AUTH_LISTEN"] = f"127.0.0.1:{free_port()}"
    result = run_cli("demo", "--once", "--folder", str(tmp_path / "demo"), env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "SubmitMfa -> SESSION_STATE_ACTIVE" in result.stdout
    assert '"outcome": "SYNCED", "items": 5' in result.stdout
    files = sorted(
        p.name for p in (tmp_path / "demo" / "out" / "demo-user" / "activities").iterdir()
    )
    assert len([name for name in files if name.endswith(".json")]) == 5
    assert len([name for name in files if name.endswith(".zip")]) == 5
    assert "grpcurl -plaintext" in result.stdout
    # A second run reuses the same development key and tokens.
    again = run_cli("demo", "--once", "--folder", str(tmp_path / "demo"), env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    # A fresh emulator each run: same activity ids, so the folder holds no duplicates.
    activities = tmp_path / "demo" / "out" / "demo-user" / "activities"
    assert len(list(activities.glob("*.json"))) == 5
    assert "demo-password" not in result.stderr + again.stderr


def test_prune_audit_keeps_recent_events(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert run_cli("migrate", env=env).returncode == 0
    pruned = run_cli("prune-audit", env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert "deleted 0 audit events older than 90 days" in pruned.stdout
    explicit = run_cli("prune-audit", "--older-than", "7", env=env)
    assert "older than 7 days" in explicit.stdout
    bad = run_cli("prune-audit", env={**env, "GARMIN_AUTH_AUDIT_RETENTION_DAYS": "0"})
    assert bad.returncode == 2
    assert "GARMIN_AUTH_AUDIT_RETENTION_DAYS" in bad.stderr
