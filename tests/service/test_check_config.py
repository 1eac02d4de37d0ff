"""`garmin-auth-service check-config`: a good set-up passes; each broken piece fails on its own
line, naming what is wrong and never echoing a secret."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from auth_service.checks import CheckResult, run_checks
from auth_service.crypto import Keyring
from auth_service.domain.models import GarminTokens, OAuth1Token, OAuth2Token, SessionState
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.models import GarminAuthenticationState
from auth_service.storage.secrets import SecretBox
from tests.fixtures.certificates import Authority
from tests.fixtures.servers import CONSUMER_KEY, CONSUMER_SECRET, write_callers_file
from tests.service.test_cli import run_cli

K1 = Keyring.generate_key_value("k1")
K2 = Keyring.generate_key_value("k2")


def key_material(entry: str) -> str:
    return entry.split(":", 1)[1]


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """A complete, working configuration: mutual TLS, metrics, an upstream URL."""
    ca = Authority.create("check-config CA")
    cert, key = ca.issue_server().write(tmp_path / "tls", "server")
    return {
        "GARMIN_AUTH_DATABASE_URL": database_url,
        "GARMIN_AUTH_ENCRYPTION_KEYS": K1,
        "GARMIN_AUTH_CALLERS_FILE": str(write_callers_file(tmp_path / "callers.toml")),
        "GARMIN_AUTH_OAUTH_CONSUMER_KEY": CONSUMER_KEY,
        "GARMIN_AUTH_OAUTH_CONSUMER_SECRET": CONSUMER_SECRET,
        "GARMIN_AUTH_TLS_CERT": str(cert),
        "GARMIN_AUTH_TLS_KEY": str(key),
        "GARMIN_AUTH_TLS_CLIENT_CA": str(ca.write(tmp_path / "tls")),
        "GARMIN_AUTH_UPSTREAM_URL": "http://127.0.0.1:8080/garmin",
        "GARMIN_AUTH_METRICS_LISTEN": "0.0.0.0:9090",
    }


def store_session(database_url: str, user_id: str, key_entry: str) -> None:
    """A user's session sealed under `key_entry`, as a replica with that primary key wrote it."""
    now = datetime.now(UTC)
    tokens = GarminTokens(
        oauth1=OAuth1Token(oauth_token="oauth1-token", oauth_token_secret="oauth1-secret"),
        oauth2=OAuth2Token(
            scope="CONNECT_READ",
            jti="jti",
            token_type="Bearer",
            access_token="access-token",
            refresh_token="refresh-token",
            expires_at=now + timedelta(hours=1),
            refresh_token_expires_at=now + timedelta(days=30),
        ),
    )
    engine = create_engine_for(database_url)
    try:
        with session_factory(engine).begin() as session:
            session.add(
                GarminAuthenticationState(
                    user_id=user_id,
                    state=SessionState.ACTIVE,
                    session_ciphertext=SecretBox(Keyring.parse(key_entry)).seal_tokens(
                        user_id, 1, tokens
                    ),
                    session_version=1,
                    access_token_expires_at=tokens.oauth2.expires_at,
                    fencing_token=0,
                    created_at=now,
                    updated_at=now,
                )
            )
    finally:
        engine.dispose()


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {result.name: result for result in results}


def failed(results: list[CheckResult]) -> dict[str, str]:
    return {result.name: result.detail for result in results if not result.ok}


def test_good_configuration_passes_every_check(env: dict[str, str], database_url: str) -> None:
    store_session(database_url, "old-user", K1)
    store_session(database_url, "new-user", K2)
    env["GARMIN_AUTH_ENCRYPTION_KEYS"] = f"{K2},{K1}"  # mid-rotation: k2 primary, k1 kept
    results = run_checks(env)
    assert failed(results) == {}
    checks = by_name(results)
    assert list(checks) == [
        "settings",
        "database",
        "migrations",
        "encryption keys",
        "stored secrets",
        "callers",
        "tls",
        "upstream",
        "metrics",
        "serving",
    ]
    assert "at head" in checks["migrations"].detail
    assert "2 key(s) (k2, k1), primary k2" in checks["encryption keys"].detail
    assert "sessions: k2=1, k1=1 (each key id opened a sample)" in checks["stored secrets"].detail
    assert "MFA challenges: none stored" in checks["stored secrets"].detail
    assert "4 caller(s), 4 by token, 0 by client certificate" in checks["callers"].detail
    assert checks["tls"].detail.startswith("mutual TLS; certificate CN=localhost")
    assert "http://127.0.0.1:8080/garmin" in checks["upstream"].detail
    assert "WARNING: GARMIN_AUTH_UPSTREAM_URL is http://" in checks["upstream"].detail
    assert checks["serving"].detail.startswith(
        "health listener 0.0.0.0:8081; reflection authenticated; connections recycled after 300 s"
    )
    text = "\n".join(result.line() for result in results)
    for secret in (key_material(K1), key_material(K2), CONSUMER_SECRET):
        assert secret not in text


@pytest.mark.parametrize("backend", ["sqlite"])
def test_command_prints_one_line_per_check_and_exits_zero(env: dict[str, str]) -> None:
    result = run_cli("check-config", env={**_process_env(), **env})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 10
    assert all(line.startswith("ok   ") for line in lines)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_command_exits_non_zero_on_a_problem(env: dict[str, str]) -> None:
    env["GARMIN_AUTH_ENCRYPTION_KEYS"] = "k1:c2hvcnQ="
    result = run_cli("check-config", env={**_process_env(), **env})
    assert result.returncode == 1
    assert "FAIL encryption keys: GARMIN_AUTH_ENCRYPTION_KEYS" in result.stdout
    assert "ok   database" in result.stdout  # the other checks still ran


def _process_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("GARMIN_AUTH_")}


# --- each broken piece ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_unreachable_database(env: dict[str, str]) -> None:
    env["GARMIN_AUTH_DATABASE_URL"] = "postgresql+psycopg://garmin:hunter2-secret@127.0.0.1:1/x"
    results = run_checks(env)
    problems = failed(results)
    assert "unreachable" in problems["database"]
    assert "postgresql+psycopg://garmin:***@127.0.0.1:1/x" in problems["database"]
    assert problems["migrations"] == "not checked: the database is unreachable"
    assert "stored secrets" in problems
    assert "hunter2-secret" not in "\n".join(result.line() for result in results)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_missing_sqlite_file_is_not_created(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "typo.sqlite3"
    env["GARMIN_AUTH_DATABASE_URL"] = f"sqlite:///{path}"
    assert "the file does not exist" in failed(run_checks(env))["database"]
    assert not path.exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_unmigrated_database(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite3"
    sqlite3.connect(path).close()
    env["GARMIN_AUTH_DATABASE_URL"] = f"sqlite:///{path}"
    problems = failed(run_checks(env))
    assert problems["migrations"].startswith("never migrated")
    assert "garmin-auth-service migrate" in problems["migrations"]
    assert set(problems) == {"migrations", "stored secrets"}


def test_session_under_a_key_that_was_dropped(env: dict[str, str], database_url: str) -> None:
    store_session(database_url, "old-user", K1)
    store_session(database_url, "new-user", K2)
    env["GARMIN_AUTH_ENCRYPTION_KEYS"] = K2  # k1 dropped before rotate-keys finished
    problems = failed(run_checks(env))
    assert set(problems) == {"stored secrets"}
    assert (
        "1 session(s) under a key id not in GARMIN_AUTH_ENCRYPTION_KEYS"
        in problems["stored secrets"]
    )


def test_wrong_key_under_a_known_id(env: dict[str, str], database_url: str) -> None:
    store_session(database_url, "ann", K1)
    impostor = Keyring.generate_key_value("k1")  # same id, other key
    env["GARMIN_AUTH_ENCRYPTION_KEYS"] = impostor
    problems = failed(run_checks(env))
    assert "the session of user 'ann' is under key id 'k1'" in problems["stored secrets"]
    assert key_material(impostor) not in problems["stored secrets"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_malformed_keys_are_never_echoed(env: dict[str, str]) -> None:
    pasted = key_material(K1)
    env["GARMIN_AUTH_ENCRYPTION_KEYS"] = f"{pasted}:"
    results = run_checks(env)
    problems = failed(results)
    assert "GARMIN_AUTH_ENCRYPTION_KEYS" in problems["encryption keys"]
    assert "GARMIN_AUTH_ENCRYPTION_KEYS" in problems["settings"]
    assert pasted not in "\n".join(result.line() for result in results)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_malformed_callers_file(env: dict[str, str], tmp_path: Path) -> None:
    callers = tmp_path / "broken.toml"
    callers.write_text('[[callers]]\nname = "x"\nroles = ["admin"]\n', encoding="utf-8")
    env["GARMIN_AUTH_CALLERS_FILE"] = str(callers)
    problems = failed(run_checks(env))
    assert set(problems) == {"callers"}
    assert "give exactly one of token_sha256 and cert_name" in problems["callers"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_callers_file_not_in_utf8_is_a_problem_not_a_crash(
    env: dict[str, str], tmp_path: Path
) -> None:
    callers = tmp_path / "latin1.toml"
    callers.write_bytes(b"# caf\xe9\n[[callers]]\nname = 'x'\n")
    env["GARMIN_AUTH_CALLERS_FILE"] = str(callers)
    problems = failed(run_checks(env))
    assert set(problems) == {"callers"}
    assert "not UTF-8 (at byte 5)" in problems["callers"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_certificate_callers_need_mutual_tls(env: dict[str, str], tmp_path: Path) -> None:
    callers = tmp_path / "by-cert.toml"
    callers.write_text(
        '[[callers]]\nname = "worker"\ncert_name = "worker.svc"\nroles = ["worker"]\n',
        encoding="utf-8",
    )
    env["GARMIN_AUTH_CALLERS_FILE"] = str(callers)
    assert "1 by client certificate" in by_name(run_checks(env))["callers"].detail
    del env["GARMIN_AUTH_TLS_CLIENT_CA"]
    problems = failed(run_checks(env))
    assert set(problems) == {"callers"}
    assert "worker use cert_name, but mutual TLS is off" in problems["callers"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_tls_key_that_does_not_fit(env: dict[str, str], tmp_path: Path) -> None:
    _, stray_key = Authority.create("other").issue_server().write(tmp_path / "stray", "server")
    env["GARMIN_AUTH_TLS_KEY"] = str(stray_key)
    problems = failed(run_checks(env))
    assert set(problems) == {"tls"}
    assert problems["tls"].startswith("GARMIN_AUTH_TLS_KEY:")
    assert "does not belong to the certificate" in problems["tls"]
    assert stray_key.read_text()[30:90] not in problems["tls"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_expired_certificate(env: dict[str, str], tmp_path: Path) -> None:
    expired = Authority.create("ca").issue_server(not_after=datetime.now(UTC) - timedelta(hours=1))
    cert, key = expired.write(tmp_path / "expired", "server")
    env.update(GARMIN_AUTH_TLS_CERT=str(cert), GARMIN_AUTH_TLS_KEY=str(key))
    assert "has expired" in failed(run_checks(env))["tls"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_unreadable_tls_files_and_half_pairs(env: dict[str, str], tmp_path: Path) -> None:
    env["GARMIN_AUTH_TLS_CLIENT_CA"] = str(tmp_path / "missing-ca.crt")
    assert failed(run_checks(env))["tls"].startswith("GARMIN_AUTH_TLS_CLIENT_CA: cannot read")
    del env["GARMIN_AUTH_TLS_KEY"]
    problems = failed(run_checks(env))
    assert problems["tls"].startswith("GARMIN_AUTH_TLS_KEY: is required")
    assert problems["settings"].startswith("GARMIN_AUTH_TLS_KEY: is required")


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:99999", "not a URL"),
        ("http:///no-host", "must be http(s)://host"),
        ("https://garmin.proxy/?region=eu", "must not have a query"),
        ("https://user:proxy-pass-123@garmin.proxy", "must not carry user:password@"),
    ],
)
def test_malformed_upstream_url(env: dict[str, str], url: str, expected: str) -> None:
    env["GARMIN_AUTH_UPSTREAM_URL"] = url
    results = run_checks(env)
    assert expected in failed(results)["upstream"]
    assert "proxy-pass-123" not in "\n".join(result.line() for result in results)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_malformed_metrics_address(env: dict[str, str]) -> None:
    env["GARMIN_AUTH_METRICS_LISTEN"] = "9090"
    problems = failed(run_checks(env))
    assert problems["metrics"].startswith("GARMIN_AUTH_METRICS_LISTEN: expected host:port")
    assert problems["settings"].startswith("GARMIN_AUTH_METRICS_LISTEN")


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GARMIN_AUTH_LOGIN_FLOW", "oauth1"),
        ("GARMIN_AUTH_DI_IMPERSONATE", "netscape4"),
        ("GARMIN_AUTH_DI_ON_REFUSED_CLIENT_ID", "retry"),
        ("GARMIN_AUTH_DI_SERVICE_URLS", "http://plain.example"),
        ("GARMIN_AUTH_DI_CLIENT_IDS", "A,A"),
        ("GARMIN_AUTH_SIGNIN_COOLDOWN", "-1"),
    ],
)
def test_sign_in_settings_are_checked(env: dict[str, str], variable: str, value: str) -> None:
    env[variable] = value
    assert failed(run_checks(env))["settings"].startswith(variable)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GARMIN_AUTH_MIGRATION_LOCK_TIMEOUT", "soon"),
        ("GARMIN_AUTH_MIGRATION_ATTEMPTS", "0"),
        ("GARMIN_AUTH_AUDIT_RETENTION_DAYS", "forever"),
    ],
)
def test_command_settings_are_checked(env: dict[str, str], variable: str, value: str) -> None:
    # Read by migrate and prune-audit alone: check-config must not call them fine.
    env[variable] = value
    assert failed(run_checks(env))["settings"].startswith(variable)


# --- exposure (issue 14) ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_development_flag_fails_outside_loopback(env: dict[str, str]) -> None:
    env["GARMIN_AUTH_ALLOW_UNAUTHENTICATED"] = "true"
    env["GARMIN_AUTH_LISTEN"] = "0.0.0.0:50051"
    problems = failed(run_checks(env))
    assert "is not a loopback address" in problems["callers"]
    assert problems["settings"].startswith("GARMIN_AUTH_ALLOW_UNAUTHENTICATED: is refused")
    env["GARMIN_AUTH_LISTEN"] = "127.0.0.1:50051"
    assert "callers" not in failed(run_checks(env))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_plaintext_upstream_fails_in_production(env: dict[str, str]) -> None:
    env["GARMIN_AUTH_ENVIRONMENT"] = "production"
    problems = failed(run_checks(env))
    assert "production refuses a plaintext upstream" in problems["upstream"]
    assert problems["settings"].startswith("GARMIN_AUTH_ENVIRONMENT: production refuses")
    env["GARMIN_AUTH_UPSTREAM_URL"] = "https://garmin.proxy.example"
    assert failed(run_checks(env)) == {}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_plaintext_grpc_beyond_loopback_fails_in_production(env: dict[str, str]) -> None:
    for name in ("TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA"):
        del env[f"GARMIN_AUTH_{name}"]
    env["GARMIN_AUTH_UPSTREAM_URL"] = "https://garmin.proxy.example"
    env["GARMIN_AUTH_LISTEN"] = "0.0.0.0:50051"
    lines = by_name(run_checks(env))
    assert "WARNING: 0.0.0.0:50051 is not loopback" in lines["tls"].detail
    env["GARMIN_AUTH_ENVIRONMENT"] = "production"
    problems = failed(run_checks(env))
    assert set(problems) == {"tls", "settings"}
    assert "production refuses plaintext gRPC on 0.0.0.0:50051" in problems["tls"]
    env["GARMIN_AUTH_ALLOW_PLAINTEXT_LISTEN"] = "true"
    assert failed(run_checks(env)) == {}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_secrets_from_files(env: dict[str, str], tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(env.pop("GARMIN_AUTH_ENCRYPTION_KEYS") + "\n")
    url_file = tmp_path / "url"
    url_file.write_text(env.pop("GARMIN_AUTH_DATABASE_URL"))
    env["GARMIN_AUTH_ENCRYPTION_KEYS_FILE"] = str(keys_file)
    env["GARMIN_AUTH_DATABASE_URL_FILE"] = str(url_file)
    assert failed(run_checks(env)) == {}
    env["GARMIN_AUTH_ENCRYPTION_KEYS"] = K2  # and the file: which one? refused
    problems = failed(run_checks(env))
    assert problems["secret files"] == (
        "GARMIN_AUTH_ENCRYPTION_KEYS_FILE: set either GARMIN_AUTH_ENCRYPTION_KEYS or "
        "GARMIN_AUTH_ENCRYPTION_KEYS_FILE"
    )
    assert key_material(K2) not in "\n".join(problems.values())
