"""The `garmin-auth-service` command as an operator runs it: configuration errors, start-up,
graceful stop on SIGTERM, migrations, and the demo."""

from __future__ import annotations

import hashlib
import json
import os
import re
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
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from auth_service.api.callers import parse_callers
from auth_service.config import load_settings
from auth_service.crypto import Keyring
from auth_service.domain.policies import (
    ANDROID_SERVICE_URL,
    IOS_SERVICE_URL,
    DiSettings,
    LoginFlow,
    RefusedClientId,
)
from auth_service.operator_commands import MIN_TOKEN_LENGTH
from auth_service.serving_config import read_serving_settings
from auth_service.storage.database import create_engine_for
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_client.env import ConfigError, EnvReader
from garmin_emulator import GarminEmulator
from tests.fixtures.emulators import scanned_emulator
from tests.fixtures.servers import CONSUMER_KEY, CONSUMER_SECRET, ROLE_TOKENS, write_callers_file

CLI = str(Path(sys.executable).parent / "garmin-auth-service")
LONG_TOKEN = "a-bearer-token-of-forty-characters-12345"


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GARMIN_AUTH_")}
    env.update(
        {
            "GARMIN_AUTH_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "GARMIN_AUTH_ENCRYPTION_KEYS": Keyring.generate_key_value("k1"),
            "GARMIN_AUTH_CALLERS_FILE": str(write_callers_file(tmp_path / "callers.toml")),
            "GARMIN_AUTH_OAUTH_CONSUMER_KEY": CONSUMER_KEY,
            "GARMIN_AUTH_OAUTH_CONSUMER_SECRET": CONSUMER_SECRET,
            # Not the default 0.0.0.0:8081: tests run side by side.
            "GARMIN_AUTH_HEALTH_LISTEN": f"127.0.0.1:{free_port()}",
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
        ("GARMIN_AUTH_LOG_LEVEL", "chatty", "GARMIN_AUTH_LOG_LEVEL: expected one of DEBUG"),
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
    with pytest.raises(ConfigError, match="GARMIN_AUTH_CALLERS_FILE") as missing:
        load_settings({**env, "GARMIN_AUTH_ALLOW_UNAUTHENTICATED": "false"})
    # The error no longer suggests the development flag (issue 14, finding 6).
    assert "ALLOW_UNAUTHENTICATED" not in str(missing.value)


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "10.0.0.5:50051", "[::]:50051", "db:50051"])
def test_development_flag_is_refused_outside_loopback(tmp_path: Path, listen: str) -> None:
    result = run_cli(
        "serve",
        env=base_env(tmp_path, GARMIN_AUTH_ALLOW_UNAUTHENTICATED="true", GARMIN_AUTH_LISTEN=listen),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "garmin-auth-service: configuration error: GARMIN_AUTH_ALLOW_UNAUTHENTICATED: is "
        f"refused: GARMIN_AUTH_LISTEN ({listen}) is not a loopback address "
        "(127.0.0.0/8, ::1, localhost)"
    ]


@pytest.mark.parametrize("listen", ["127.0.0.1:1", "127.8.9.10:1", "[::1]:1", "localhost:1"])
def test_development_flag_is_allowed_on_loopback(tmp_path: Path, listen: str) -> None:
    env = base_env(tmp_path, GARMIN_AUTH_ALLOW_UNAUTHENTICATED="true", GARMIN_AUTH_LISTEN=listen)
    assert load_settings(env).allow_unauthenticated
    with pytest.raises(ConfigError, match="GARMIN_AUTH_ENVIRONMENT=production"):
        load_settings({**env, "GARMIN_AUTH_ENVIRONMENT": "production"})


def test_secrets_may_come_from_files(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    keys = tmp_path / "keys"
    keys.write_text(env.pop("GARMIN_AUTH_ENCRYPTION_KEYS") + "\n")  # as a Secret mounts it
    url = tmp_path / "url"
    url.write_text("postgresql+psycopg://garmin:from-a-file@db/garmin?sslmode=verify-full\n")
    env["GARMIN_AUTH_ENCRYPTION_KEYS_FILE"] = str(keys)
    env["GARMIN_AUTH_DATABASE_URL_FILE"] = str(url)
    env.pop("GARMIN_AUTH_DATABASE_URL")
    settings = load_settings(env)
    assert settings.database_url.endswith("@db/garmin?sslmode=verify-full")
    assert settings.keyring.primary_kid == "k1"
    with pytest.raises(ConfigError, match="GARMIN_AUTH_DATABASE_URL_FILE: set either"):
        load_settings({**env, "GARMIN_AUTH_DATABASE_URL": "sqlite:///x"})
    with pytest.raises(ConfigError, match="GARMIN_AUTH_ENCRYPTION_KEYS_FILE: cannot read"):
        load_settings({**env, "GARMIN_AUTH_ENCRYPTION_KEYS_FILE": str(tmp_path / "none")})


def test_plaintext_upstream_is_refused_in_production(tmp_path: Path) -> None:
    env = base_env(tmp_path, GARMIN_AUTH_UPSTREAM_URL="http://emulator:8080")
    assert load_settings(env).serving.environment == "development"
    with pytest.raises(ConfigError, match="production refuses a plaintext upstream"):
        load_settings({**env, "GARMIN_AUTH_ENVIRONMENT": "production"})
    production = {**env, "GARMIN_AUTH_ENVIRONMENT": "production"}
    production["GARMIN_AUTH_UPSTREAM_URL"] = "https://proxy.example"
    assert load_settings(production).serving.production
    with pytest.raises(ConfigError, match="DI_PLAIN_HTTP"):
        load_settings({**production, "GARMIN_AUTH_DI_PLAIN_HTTP": "true"})


def test_plaintext_grpc_beyond_loopback_is_refused_in_production(tmp_path: Path) -> None:
    """Before: production served plaintext on 0.0.0.0 without a word (the image's
    GARMIN_AUTH_LISTEN), so caller tokens and Garmin passwords crossed the network."""
    env = base_env(
        tmp_path,
        GARMIN_AUTH_UPSTREAM_URL="https://proxy.example",
        GARMIN_AUTH_LISTEN="0.0.0.0:50051",
    )
    assert load_settings(env).tls is None  # development: allowed (check-config warns)
    production = {**env, "GARMIN_AUTH_ENVIRONMENT": "production"}
    with pytest.raises(
        ConfigError, match=re.escape("production refuses plaintext gRPC on 0.0.0.0:50051")
    ):
        load_settings(production)
    assert load_settings({**production, "GARMIN_AUTH_ALLOW_PLAINTEXT_LISTEN": "true"}).tls is None
    assert load_settings({**production, "GARMIN_AUTH_LISTEN": "127.0.0.1:50051"}).tls is None


def test_serving_settings_and_their_defaults(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env.pop("GARMIN_AUTH_HEALTH_LISTEN")
    serving = load_settings(env).serving
    assert serving.health_listen == "0.0.0.0:8081"
    assert serving.reflection.value == "authenticated"
    assert serving.max_connection_age_seconds == 300
    custom = load_settings(
        {
            **env,
            "GARMIN_AUTH_HEALTH_LISTEN": "off",
            "GARMIN_AUTH_REFLECTION": "open",
            "GARMIN_AUTH_MAX_CONNECTION_AGE": "60",
        }
    ).serving
    assert (custom.health_listen, custom.reflection.value) == (None, "open")
    assert custom.max_connection_age_seconds == 60
    with pytest.raises(ConfigError, match="GARMIN_AUTH_REFLECTION: production refuses open"):
        # Anyone who reaches the port would read the API; before, production accepted it.
        read_serving_settings(
            EnvReader(
                {"GARMIN_AUTH_REFLECTION": "open", "GARMIN_AUTH_ENVIRONMENT": "production"},
                "GARMIN_AUTH_",
            )
        )
    for variable, value in (
        ("GARMIN_AUTH_REFLECTION", "maybe"),
        ("GARMIN_AUTH_HEALTH_LISTEN", "8081"),
        # Digits str.isdigit() accepts and int() refuses (or reads as 50051): a config error,
        # not a ValueError traceback nor a port nobody wrote.
        ("GARMIN_AUTH_HEALTH_LISTEN", "127.0.0.1:\u00b2"),
        ("GARMIN_AUTH_HEALTH_LISTEN", "127.0.0.1:\u0665\u0660\u0660\u0665\u0661"),
        ("GARMIN_AUTH_LISTEN", "127.0.0.1:\u00b2"),
        ("GARMIN_AUTH_LISTEN", "127.0.0.1:\u0665\u0660\u0660\u0665\u0661"),
        ("GARMIN_AUTH_MAX_CONNECTION_AGE", "1"),
        ("GARMIN_AUTH_ENVIRONMENT", "prod"),
    ):
        with pytest.raises(ConfigError, match=variable):
            load_settings({**env, variable: value})


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
    # The access log is written in batches; a graceful stop writes its last lines too.
    access = [json.loads(line) for line in stderr.splitlines() if '"auth_service.rpc"' in line]
    assert {"rpc": "Login", "caller": "admin-caller", "outcome": "OK"}.items() <= access[-1].items()


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    first, second = run_cli("migrate", env=env), run_cli("migrate", env=env)
    assert first.returncode == second.returncode == 0
    assert "is at revision" in second.stdout
    # Nothing but its own lines: SQLAlchemy's warning about the expression index SQLite's
    # batch migrations re-create themselves was printed on every fresh migrate (doc review).
    assert "Warning" not in first.stderr


def test_hash_token_prints_the_callers_file_digest(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "hash-token"],
        input=LONG_TOKEN + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=base_env(tmp_path),
    )
    assert result.stdout.strip() == hashlib.sha256(LONG_TOKEN.encode()).hexdigest()


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
    # What the README's grpcurl examples need, in one line to paste.
    exports = re.search(
        r"export ADMIN_TOKEN=(\S+) WORKER_TOKEN=(\S+) TICKET=(ST-\S+)", result.stdout
    )
    assert exports is not None, result.stdout
    secrets_file = json.loads((tmp_path / "demo" / "dev-secrets.json").read_text())
    assert exports.group(1, 2) == (
        secrets_file["tokens"]["admin"],
        secrets_file["tokens"]["worker"],
    )
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


def test_new_caller_token_prints_a_long_token_and_its_entry(tmp_path: Path) -> None:
    result = run_cli(
        "new-caller-token", "--name", "sync-worker", "--role", "worker", env=base_env(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    first, *entry = result.stdout.strip().splitlines()
    token = first.rsplit(" ", 1)[1]
    assert len(token) >= MIN_TOKEN_LENGTH
    (parsed,) = parse_callers("\n".join(entry[1:]), "printed entry")
    assert parsed.caller.name == "sync-worker"
    assert parsed.caller.roles == frozenset({"worker"})
    assert parsed.token_sha256 == hashlib.sha256(token.encode()).digest()
    again = run_cli("new-caller-token", "--name", "x", "--role", "admin", env=base_env(tmp_path))
    assert token not in again.stdout  # fresh each time
    bad = run_cli("new-caller-token", "--name", "x", "--role", "root", env=base_env(tmp_path))
    assert bad.returncode == 2


@pytest.mark.parametrize("prefix", ["tenant a/", ""])
def test_new_caller_token_refuses_a_prefix_the_service_would_refuse(
    tmp_path: Path, prefix: str
) -> None:
    """Pasted into the live callers file, such an entry would make the service refuse every
    caller (before: printed with exit 0)."""
    result = run_cli(
        "new-caller-token",
        *("--name", "w", "--role", "worker", "--user-id-prefix", prefix),
        env=base_env(tmp_path),
    )
    assert result.returncode == 2
    assert "--user-id-prefix" in result.stderr
    assert "token" not in result.stdout


def test_new_caller_token_writes_any_name_as_toml_reads_it(tmp_path: Path) -> None:
    """A name outside the BMP: JSON's surrogate-pair escape, printed before, is no TOML."""
    name = 'sync \U0001f680 "eu"'
    result = run_cli("new-caller-token", "--name", name, "--role", "worker", env=base_env(tmp_path))
    assert result.returncode == 0, result.stderr
    entry = result.stdout.strip().splitlines()[2:]
    (parsed,) = parse_callers("\n".join(entry), "printed entry")
    assert parsed.caller.name == name


def test_hash_token_refuses_a_short_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "hash-token"],
        input="short-token\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=base_env(tmp_path),
    )
    assert result.returncode == 2
    assert f"at least {MIN_TOKEN_LENGTH}" in result.stderr


def test_health_check_command(tmp_path: Path) -> None:
    env = base_env(tmp_path, GARMIN_AUTH_LISTEN=f"127.0.0.1:{free_port()}")
    assert run_cli("migrate", env=env).returncode == 0
    process = subprocess.Popen(
        [CLI, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with grpc.insecure_channel(env["GARMIN_AUTH_LISTEN"]) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        live = run_cli("health-check", env=env)
        assert (live.returncode, live.stdout) == (0, "liveness: SERVING\n")
        ready = run_cli("health-check", "--service", "readiness", env=env)
        assert (ready.returncode, ready.stdout) == (0, "readiness: SERVING\n")
        # Health is served on the main port too: with the listener off, that is asked.
        main_port = run_cli("health-check", env={**env, "GARMIN_AUTH_HEALTH_LISTEN": "off"})
        assert (main_port.returncode, main_port.stdout) == (0, "liveness: SERVING\n")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    gone = run_cli("health-check", env=env)
    assert gone.returncode == 1
    assert gone.stdout.startswith("liveness: no answer from 127.0.0.1:")


def test_health_check_answers_0_or_1_whatever_its_settings(tmp_path: Path) -> None:
    """A HEALTHCHECK's exit 2 is reserved by Docker; before, a listener turned off or a
    malformed setting exited 2 with nothing on stdout."""
    env = base_env(tmp_path, GARMIN_AUTH_HEALTH_LISTEN="off")
    tls = {"GARMIN_AUTH_TLS_CERT": "/etc/tls/tls.crt", "GARMIN_AUTH_TLS_KEY": "/etc/tls/tls.key"}
    no_plaintext_port = run_cli("health-check", env={**env, **tls})
    assert no_plaintext_port.returncode == 1
    assert no_plaintext_port.stdout == (
        "liveness: cannot ask: GARMIN_AUTH_HEALTH_LISTEN is off and the main port needs TLS\n"
    )
    malformed = run_cli("health-check", env={**env, "GARMIN_AUTH_HEALTH_LISTEN": "nowhere"})
    assert malformed.returncode == 1
    assert malformed.stdout.startswith("liveness: cannot ask (GARMIN_AUTH_HEALTH_LISTEN")


def test_prune_audit_refuses_a_retention_beyond_100_years_in_one_line(tmp_path: Path) -> None:
    """Before: --older-than 1000000 died on an OverflowError traceback, exit 1."""
    env = base_env(tmp_path)
    assert run_cli("migrate", env=env).returncode == 0
    result = run_cli("prune-audit", "--older-than", "1000000", env=env)
    assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr[-400:]
    assert "--older-than: must be 1-36500 days" in result.stderr


def test_unreachable_database_at_start_up_is_one_json_line(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://garmin:db-password-123@127.0.0.1:{free_port()}/garmin"
    result = run_cli("serve", env=base_env(tmp_path, GARMIN_AUTH_DATABASE_URL=url))
    assert result.returncode == 3
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR"
    assert "does not answer: OperationalError" in record["message"]
    assert "garmin:***@127.0.0.1" in record["message"]
    assert "db-password-123" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failing_statement_shows_no_bound_value(database_url: str) -> None:
    engine = create_engine_for(database_url)
    try:
        with pytest.raises(SQLAlchemyError) as raised, engine.connect() as connection:
            connection.execute(
                text("SELECT * FROM no_such_table WHERE lease_id = :lease_id"),
                {"lease_id": "bound-secret-lease-id"},
            )
    finally:
        engine.dispose()
    assert "bound-secret-lease-id" not in str(raised.value)


@pytest.mark.parametrize("taken", [True, False], ids=["port-taken", "address-not-local"])
def test_an_unbindable_listen_address_is_one_line_naming_the_variable(
    tmp_path: Path, taken: bool
) -> None:
    """As for the metrics and health listeners; before, gRPC's RuntimeError came out as a
    traceback and exit 1."""
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        listen = f"127.0.0.1:{occupant.getsockname()[1]}" if taken else "192.0.2.10:50051"
        env = base_env(tmp_path, GARMIN_AUTH_LISTEN=listen)
        assert run_cli("migrate", env=env).returncode == 0
        result = run_cli("serve", env=env, timeout=30)
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 2
    assert "GARMIN_AUTH_LISTEN" in result.stderr


def test_a_malformed_audit_retention_stops_serve_and_fails_check_config(tmp_path: Path) -> None:
    """Before, only prune-audit read GARMIN_AUTH_AUDIT_RETENTION_DAYS: serve started,
    check-config said every setting parses, and the daily prune failed on it."""
    env = base_env(tmp_path, GARMIN_AUTH_AUDIT_RETENTION_DAYS="ninety")
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert raised.value.variable == "GARMIN_AUTH_AUDIT_RETENTION_DAYS"
    checked = run_cli("check-config", env=env)
    assert checked.returncode == 1
    assert "GARMIN_AUTH_AUDIT_RETENTION_DAYS" in checked.stdout


def test_a_malformed_log_level_is_a_failed_check_not_a_stop(tmp_path: Path) -> None:
    """Before, check-config exited 2 on it before printing any check line."""
    env = base_env(tmp_path, GARMIN_AUTH_LOG_LEVEL="chatty")
    checked = run_cli("check-config", env=env)
    assert checked.returncode == 1, checked.stderr
    assert "FAIL settings" in checked.stdout
    assert "GARMIN_AUTH_LOG_LEVEL" in checked.stdout
    served = run_cli("serve", env=env)
    assert served.returncode == 2
    assert "GARMIN_AUTH_LOG_LEVEL" in served.stderr
