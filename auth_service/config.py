"""Service configuration, read from the environment once at start-up.

A missing or malformed setting raises ConfigError naming the variable; the CLI prints that
one line and exits 2. Secrets (keys, consumer secret) never appear in a message or a repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from curl_cffi.requests.impersonate import REAL_TARGET_MAP, BrowserType
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from auth_service.crypto import Keyring, KeyringError
from auth_service.domain.changes import StreamSettings, WebhookSettings
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.policies import (
    ANDROID_SERVICE_URL,
    DEFAULT_IMPERSONATE,
    DEFAULT_REFRESH_LIFETIME_SECONDS,
    IOS_SERVICE_URL,
    KNOWN_DI_CLIENT_IDS,
    DiSettings,
    LeaseSettings,
    LoginFlow,
    LoginSettings,
    RefreshSettings,
    RefusedClientId,
)
from auth_service.serving_config import (
    PLAINTEXT_LISTEN_FLAG,
    ServingSettings,
    check_development_flag,
    check_plaintext_upstream,
    is_host_port,
    load_log_level,
    plaintext_listen_refusal,
    plaintext_upstream,
    read_serving_settings,
    with_secret_files,
)
from auth_service.stream_config import read_stream_settings, read_webhook_settings
from garmin_client.env import ConfigError, EnvReader
from garmin_client.settings import UpstreamSettings, read_upstream_settings
from garmin_client.url_secrets import redacted_url, unencoded_at_after_password

PREFIX = "GARMIN_AUTH_"
DEFAULT_DATABASE_URL = "sqlite:///garmin-auth.sqlite3"
DEFAULT_LISTEN = "127.0.0.1:50051"
# A refresh claim outlives one Garmin call (every attempt timing out) by this much.
CLAIM_MARGIN_SECONDS = 30.0
# What a SubmitMfa held its challenge for before the hold grew with the upstream timeout.
MFA_CLAIM_FLOOR_SECONDS = 120.0
# The Garmin calls of garth's resume_login (see mfa_claim_seconds).
GARTH_MFA_CALLS = 4
# Waiting for another replica's claim: its whole life, and a little more.
CLAIM_WAIT_EXTRA_SECONDS = 10.0


@dataclass(frozen=True)
class TlsSettings:
    """TLS for the gRPC port; with `client_ca`, mutual TLS (client certificates required)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    # How often a new connection may make the server look at the files again. cert-manager
    # rotates in place; a check every few seconds keeps stat() calls off most handshakes
    # and still picks up a rotation well within a minute.
    reload_check_seconds: float = 5.0

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint (a separate HTTP port; None: no endpoint)."""

    listen: str | None = None
    # Gauges read from the database (sessions by state, leases, MFA challenges) are cached
    # this long, so a scrape every few seconds from several Prometheus servers costs at most
    # one set of queries per interval.
    database_cache_seconds: float = 5.0


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything the service reads from the environment."""

    database_url: str
    keyring: Keyring
    upstream: UpstreamSettings
    listen: str = DEFAULT_LISTEN
    callers_file: Path | None = None
    allow_unauthenticated: bool = False
    grace_period_seconds: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    leases: LeaseSettings = field(default_factory=LeaseSettings)
    login: LoginSettings = field(default_factory=LoginSettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    tls: TlsSettings | None = None
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    # Seconds between background housekeeping passes (expired MFA challenges, stale login
    # counters, abandoned MFA sessions).
    housekeeping_interval_seconds: float = 300.0
    # Which sign-in new logins use, and how the DI sign-in talks to Garmin.
    login_flow: LoginFlow = LoginFlow.DI
    di: DiSettings = field(default_factory=DiSettings)
    # How Garmin's 429s are honoured: per-account cooldowns, per-endpoint breakers.
    limits: GarminLimitSettings = field(default_factory=GarminLimitSettings)
    # Health listener, reflection, connection age, environment (auth_service.serving_config).
    serving: ServingSettings = field(default_factory=ServingSettings)
    # WatchSessionEvents and webhooks (auth_service.stream_config).
    stream: StreamSettings = field(default_factory=StreamSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    def __repr__(self) -> str:
        return (
            f"Settings(database={redacted_database_url(self.database_url)!r}, "
            f"listen={self.listen!r}, keyring={self.keyring!r}, upstream={self.upstream!r}, "
            f"tls={self.tls!r}, metrics={self.metrics!r}, login_flow={self.login_flow.value!r})"
        )


def redacted_database_url(url: str) -> str:
    """The URL without its passwords (user:password@, ?password=, ?sslpassword=), fit for a
    log line or a command's output."""
    try:
        make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "<unparseable database URL>"
    return redacted_url(url)


def _database_url(reader: EnvReader) -> str:
    url = reader.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise reader.error("DATABASE_URL", "is not a SQLAlchemy URL") from None
    if unencoded_at_after_password(url):
        # SQLAlchemy would cut the password at its first @ and take the rest for the host,
        # which then turns up in every connection error and every redacted line.
        raise reader.error(
            "DATABASE_URL", "percent-encode the password's special characters (@ is %40)"
        )
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise reader.error("DATABASE_URL", "must be postgresql+psycopg://... or sqlite:///...")
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        raise reader.error("DATABASE_URL", "PostgreSQL URLs must use postgresql+psycopg://")
    if parsed.get_backend_name() == "sqlite" and (parsed.database or ":memory:") == ":memory:":
        # Each connection would get a database of its own: `migrate` would migrate one that
        # is gone when it exits, and `serve` would refuse the next as not migrated.
        raise reader.error(
            "DATABASE_URL", "SQLite needs a file (sqlite:///path/to/file.sqlite3), not memory"
        )
    return url


def mfa_claim_seconds(upstream: UpstreamSettings, client_ids: tuple[str, ...]) -> float:
    """How long a SubmitMfa may be with Garmin: the calls of the longer flow, each the
    upstream call's worst case, plus the margin of a claim; never under two minutes. DI: the
    code's POST, then a ticket exchange per client id tried. garth: the code's POST, the
    embed page, the OAuth1 ticket exchange and the OAuth2 exchange."""
    calls = max(1 + len(client_ids), GARTH_MFA_CALLS)
    return max(MFA_CLAIM_FLOOR_SECONDS, _call_seconds(upstream) * calls + CLAIM_MARGIN_SECONDS)


def signin_claim_seconds(upstream: UpstreamSettings, client_ids: tuple[str, ...]) -> float:
    """How long a Login may be with Garmin: the sign-in page's load, then what a SubmitMfa
    may take (the credentials' POST, the exchanges). The account is held against another
    sign-in that long: a hold that ran out while Garmin still had the first would let a
    second sign-in of the account reach Garmin beside it."""
    return mfa_claim_seconds(upstream, client_ids) + _call_seconds(upstream)


# Passes of keep-alive (GARMIN_AUTH_KEEPALIVE_INTERVAL, +/-20%) that fall within a session's
# keep-alive window at the least: one may meet Garmin's 429 or an outage, the next still finds
# the session in time.
KEEPALIVE_PASSES_PER_WINDOW = 3


# The smallest GARMIN_AUTH_MAX_MESSAGE_BYTES, which bounds answers as well as requests: above
# the largest answer the service may have to send: a worker_full grant of the largest session
# the validation rules accept (about 200 KB), and a full page of ListSessions (1,000 sessions,
# each up to about 2.3 KB: a 128-character user id and a worker's 512-character reason of
# 4-byte characters; 2.2 MB in all) or of ListAuditEvents (about 1.3 MB). Below it, a grant
# would commit and then not be sent (RESOURCE_EXHAUSTED), and the lease be held by nobody who
# knows its id until its TTL ends; a page would be read and then refused.
MIN_MESSAGE_BYTES: Final = 4 * 1024 * 1024


def _call_seconds(upstream: UpstreamSettings) -> float:
    """One Garmin call at its worst: every attempt timing out (garmin_client.retry)."""
    return upstream.timeout_seconds * (upstream.retries + 1)


def _refresh(
    reader: EnvReader, upstream: UpstreamSettings, refresh_lifetime_seconds: int
) -> RefreshSettings:
    claim = _call_seconds(upstream) + CLAIM_MARGIN_SECONDS
    interval = reader.number("KEEPALIVE_INTERVAL", 300.0, minimum=1, maximum=86400)
    # At most 29 days: a DI refresh token lives about 30 days from its last use.
    window = reader.number("KEEPALIVE_WINDOW", 604800.0, minimum=600, maximum=29 * 86400)
    if window >= refresh_lifetime_seconds:
        # The same rule for a configured lifetime: a session whose refresh token lives the
        # assumed lifetime (Garmin stated none) would be inside the window from the moment it
        # is refreshed. The window would then select nothing, and keep-alive would refresh
        # every such session each half of its lifetime (policies.keepalive_not_before), not
        # once as its token nears its end.
        raise reader.error(
            "KEEPALIVE_WINDOW",
            "must be shorter than GARMIN_AUTH_DI_REFRESH_LIFETIME "
            f"({refresh_lifetime_seconds} s), or every DI session is due from its refresh on",
        )
    if window < KEEPALIVE_PASSES_PER_WINDOW * interval:
        # A session is due only within the window: passes further apart than that (their
        # +/-20% spread included) step over it, and the session dies with keep-alive running.
        raise reader.error(
            "KEEPALIVE_WINDOW",
            f"must be at least {KEEPALIVE_PASSES_PER_WINDOW} x GARMIN_AUTH_KEEPALIVE_INTERVAL "
            f"({KEEPALIVE_PASSES_PER_WINDOW * interval:g} s), so that passes meet every session "
            "due",
        )
    return RefreshSettings(
        concurrency=reader.integer("REFRESH_CONCURRENCY", 4, minimum=1, maximum=256),
        claim_seconds=claim,
        wait_seconds=claim + CLAIM_WAIT_EXTRA_SECONDS,
        keepalive_interval_seconds=interval,
        keepalive_window_seconds=window,
        keepalive_rate=reader.number("KEEPALIVE_RATE", 10.0, minimum=0.01, maximum=1000),
        # Issue 14: GetStatus(validate) calls Garmin; at most once per user per interval.
        validate_interval_seconds=reader.number(
            "VALIDATE_INTERVAL", 60.0, minimum=0, maximum=86400
        ),
        # At most a year: a garth session's OAuth1 token lives about that long anyway.
        garth_refusal_grace_seconds=reader.number(
            "GARTH_REFUSAL_GRACE", 7 * 86400.0, minimum=0, maximum=365 * 86400
        ),
    )


def _limits(reader: EnvReader) -> GarminLimitSettings:
    default_wait = reader.number("RATE_LIMIT_DEFAULT_WAIT", 60.0, minimum=1, maximum=86400)
    max_wait = reader.number("RATE_LIMIT_MAX_WAIT", 3600.0, minimum=1, maximum=7 * 86400)
    if default_wait > max_wait:
        raise reader.error(
            "RATE_LIMIT_DEFAULT_WAIT", "must not exceed GARMIN_AUTH_RATE_LIMIT_MAX_WAIT"
        )
    return GarminLimitSettings(
        default_wait_seconds=default_wait,
        max_wait_seconds=max_wait,
        breaker_threshold=reader.integer("BREAKER_THRESHOLD", 5, minimum=0, maximum=100000),
        breaker_window_seconds=reader.number("BREAKER_WINDOW", 60.0, minimum=1, maximum=86400),
        probe_seconds=reader.number("BREAKER_PROBE_TIMEOUT", 60.0, minimum=1, maximum=3600),
    )


def read_environment(env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """`env` (default: os.environ) with its secret files read (GARMIN_AUTH_<NAME>_FILE, as
    Kubernetes mounts them). A command reads them once and passes the result to every
    `load_*`: a pipe (a shell's <(...)) gives its content to its first reader only."""
    return with_secret_files(os.environ if env is None else env)


def _reader(env: Mapping[str, str] | None) -> EnvReader:
    # Reading an environment read_environment() returned reads no file again.
    return EnvReader(read_environment(env), PREFIX)


def check_host_port(name: str, listen: str) -> str:
    """`listen` if it is host:port; ConfigError naming GARMIN_AUTH_<name> otherwise."""
    if not is_host_port(listen):
        raise ConfigError(PREFIX + name, f"expected host:port, got {listen!r}")
    return listen


def _listen(reader: EnvReader) -> str:
    return check_host_port("LISTEN", reader.get("LISTEN") or DEFAULT_LISTEN)


def load_listen(env: Mapping[str, str] | None = None) -> str:
    """Only the main port's host:port (for `health-check`)."""
    return _listen(_reader(env))


def _metrics(reader: EnvReader) -> MetricsSettings:
    listen = reader.get("METRICS_LISTEN")
    return MetricsSettings(
        listen=None if listen is None else check_host_port("METRICS_LISTEN", listen)
    )


def load_tls_settings(env: Mapping[str, str] | None = None) -> TlsSettings | None:
    """Only the TLS file paths (None: plaintext). Whether the files load is checked when
    the server starts (auth_service.tls) and by `check-config`."""
    reader = _reader(env)
    cert, key, client_ca = (
        reader.get("TLS_CERT"),
        reader.get("TLS_KEY"),
        reader.get("TLS_CLIENT_CA"),
    )
    # A certificate without its key (or the reverse) is a half-done set-up: refuse it rather
    # than silently serving plaintext.
    if cert is None and key is not None:
        raise reader.error("TLS_CERT", "is required when GARMIN_AUTH_TLS_KEY is set")
    if key is None and cert is not None:
        raise reader.error("TLS_KEY", "is required when GARMIN_AUTH_TLS_CERT is set")
    if cert is None or key is None:
        if client_ca is not None:
            raise reader.error(
                "TLS_CLIENT_CA",
                "needs GARMIN_AUTH_TLS_CERT and GARMIN_AUTH_TLS_KEY (mutual TLS is TLS first)",
            )
        return None
    return TlsSettings(
        cert_file=Path(cert),
        key_file=Path(key),
        client_ca_file=Path(client_ca) if client_ca else None,
    )


def load_database_url(env: Mapping[str, str] | None = None) -> str:
    """Only the database URL (for commands that need nothing else, like `migrate`)."""
    return _database_url(_reader(env))


@dataclass(frozen=True)
class MigrationLocking:
    """GARMIN_AUTH_MIGRATION_LOCK_TIMEOUT, _ATTEMPTS: how long one `migrate` attempt waits for
    a table's lock (0: as long as it takes), and how many attempts it makes."""

    lock_timeout_seconds: float = 5.0
    attempts: int = 12


def load_migration_locking(env: Mapping[str, str] | None = None) -> MigrationLocking:
    """Only the migration's lock settings (for `migrate`)."""
    reader = _reader(env)
    default = MigrationLocking()
    return MigrationLocking(
        lock_timeout_seconds=reader.number(
            "MIGRATION_LOCK_TIMEOUT", default.lock_timeout_seconds, minimum=0, maximum=3600
        ),
        attempts=reader.integer("MIGRATION_ATTEMPTS", default.attempts, minimum=1, maximum=1000),
    )


DEFAULT_AUDIT_RETENTION_DAYS = 90
MAX_AUDIT_RETENTION_DAYS = 36500


def load_audit_retention_days(env: Mapping[str, str] | None = None) -> int:
    """How many days of audit events `prune-audit` keeps."""
    return _reader(env).integer(
        "AUDIT_RETENTION_DAYS",
        DEFAULT_AUDIT_RETENTION_DAYS,
        minimum=1,
        maximum=MAX_AUDIT_RETENTION_DAYS,
    )


def load_keyring(env: Mapping[str, str] | None = None) -> Keyring:
    """Only the key ring (for `rotate-keys`)."""
    reader = _reader(env)
    try:
        keyring = Keyring.parse(reader.required("ENCRYPTION_KEYS"))
    except KeyringError as exc:
        raise reader.error("ENCRYPTION_KEYS", str(exc)) from None
    return _with_primary(reader, keyring)


def _with_primary(reader: EnvReader, keyring: Keyring) -> Keyring:
    """Issue 14: which known key encrypts is its own setting, so a rolling update can teach
    every replica a new key before any replica encrypts with it. Unset: the first key, as
    before the setting existed."""
    primary = reader.get("ENCRYPTION_PRIMARY_KEY_ID")
    if primary is None:
        return keyring
    if primary not in {kid for kid, _ in keyring.keys}:
        raise reader.error(
            "ENCRYPTION_PRIMARY_KEY_ID", "names no key id of GARMIN_AUTH_ENCRYPTION_KEYS"
        )
    return Keyring(keyring.keys, primary)


def impersonation_profiles() -> frozenset[str]:
    """The profiles curl_cffi knows (exact versions and its aliases such as "safari_ios")."""
    return frozenset(str(b.value) for b in BrowserType) | frozenset(REAL_TARGET_MAP)


def _names(reader: EnvReader, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = reader.get(name)
    if value is None:
        return default
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names or len(set(names)) != len(names):
        raise reader.error(name, "expected a comma-separated list without repeats")
    return names


def _service_urls(reader: EnvReader) -> tuple[str, ...]:
    service_urls = _names(reader, "DI_SERVICE_URLS", (IOS_SERVICE_URL, ANDROID_SERVICE_URL))
    if not all(url.startswith("https://") for url in service_urls):
        raise reader.error("DI_SERVICE_URLS", "every service URL must start with https://")
    return service_urls


def _di_settings(reader: EnvReader) -> DiSettings:
    client_ids = _names(reader, "DI_CLIENT_IDS", KNOWN_DI_CLIENT_IDS)
    if not all(part.replace("_", "").isalnum() for part in client_ids):
        raise reader.error("DI_CLIENT_IDS", "client ids are letters, digits and underscores")
    impersonate = reader.get("DI_IMPERSONATE") or DEFAULT_IMPERSONATE
    if impersonate not in impersonation_profiles():
        raise reader.error("DI_IMPERSONATE", "is not a curl_cffi impersonation profile")
    refused = (reader.get("DI_ON_REFUSED_CLIENT_ID") or RefusedClientId.STOP.value).lower()
    if refused not in {item.value for item in RefusedClientId}:
        raise reader.error("DI_ON_REFUSED_CLIENT_ID", f"expected stop or next, got {refused!r}")
    on_rotation = (reader.get("DI_REFRESH_EXPIRY_ON_ROTATION") or "restart").lower()
    if on_rotation not in {"restart", "keep"}:
        raise reader.error(
            "DI_REFRESH_EXPIRY_ON_ROTATION", f"expected restart or keep, got {on_rotation!r}"
        )
    return DiSettings(
        client_ids=client_ids,
        service_url=_service_urls(reader)[0],
        impersonate=impersonate,
        plain_http=reader.flag("DI_PLAIN_HTTP"),
        on_refused_client_id=RefusedClientId(refused),
        refresh_lifetime_seconds=reader.integer(
            "DI_REFRESH_LIFETIME",
            DEFAULT_REFRESH_LIFETIME_SECONDS,
            minimum=3600,
            maximum=365 * 86400,
        ),
        rotation_restarts_refresh_expiry=on_rotation == "restart",
    )


def _login_flow(reader: EnvReader) -> LoginFlow:
    value = (reader.get("LOGIN_FLOW") or LoginFlow.DI.value).lower()
    if value not in {flow.value for flow in LoginFlow}:
        raise reader.error("LOGIN_FLOW", f"expected di or garth, got {value!r}")
    return LoginFlow(value)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting; raises ConfigError on the first problem."""
    env = read_environment(env)
    reader = EnvReader(env, PREFIX)
    keyring = load_keyring(env)
    callers = reader.get("CALLERS_FILE")
    allow_unauthenticated = reader.flag("ALLOW_UNAUTHENTICATED")
    if callers is None and not allow_unauthenticated:
        raise reader.error("CALLERS_FILE", "is required (who may call, by token hash or cert)")
    default_ttl = reader.number("LEASE_DEFAULT_TTL", 300.0, minimum=5, maximum=86400)
    max_ttl = reader.number("LEASE_MAX_TTL", 3600.0, minimum=5, maximum=86400)
    if default_ttl > max_ttl:
        raise reader.error("LEASE_DEFAULT_TTL", "must not exceed GARMIN_AUTH_LEASE_MAX_TTL")
    upstream = read_upstream_settings(reader)
    login_flow = _login_flow(reader)
    serving = read_serving_settings(reader)
    listen = _listen(reader)
    di = _di_settings(reader)
    check_development_flag(
        reader,
        allow_unauthenticated=allow_unauthenticated,
        listen=listen,
        production=serving.production,
    )
    check_plaintext_upstream(
        plaintext_upstream(upstream.base_url, di.plain_http), production=serving.production
    )
    tls = load_tls_settings(env)
    refusal = plaintext_listen_refusal(
        tls=tls is not None,
        listen=listen,
        production=serving.production,
        mesh_encrypts=reader.flag(PLAINTEXT_LISTEN_FLAG),
    )
    if refusal is not None:
        raise ConfigError(PREFIX + "ENVIRONMENT", refusal)
    # Read by prune-audit alone, checked here too: serve and check-config refuse a bad value
    # rather than the daily prune failing on it. The log level is read before this, by
    # every command; check-config reads it here.
    load_audit_retention_days(env)
    load_log_level(env)
    return Settings(
        database_url=_database_url(reader),
        keyring=keyring,
        upstream=upstream,
        listen=listen,
        callers_file=Path(callers) if callers else None,
        allow_unauthenticated=allow_unauthenticated,
        grace_period_seconds=reader.number("GRACE_PERIOD", 10.0, minimum=0, maximum=600),
        max_message_bytes=reader.integer(
            "MAX_MESSAGE_BYTES",
            4 * 1024 * 1024,
            minimum=MIN_MESSAGE_BYTES,
            maximum=64 * 1024 * 1024,
        ),
        leases=LeaseSettings(default_ttl=default_ttl, max_ttl=max_ttl),
        login=LoginSettings(
            limit=reader.integer("LOGIN_LIMIT", 5, minimum=1, maximum=1000),
            window_seconds=reader.number("LOGIN_WINDOW", 3600.0, minimum=1, maximum=7 * 86400),
            mfa_challenge_ttl_seconds=reader.number(
                "MFA_CHALLENGE_TTL", 600.0, minimum=30, maximum=3600
            ),
            signin_cooldown_seconds=reader.number(
                "SIGNIN_COOLDOWN", 7200.0, minimum=0, maximum=7 * 86400
            ),
            service_urls=_service_urls(reader),
            flow=login_flow,
            mfa_claim_seconds=mfa_claim_seconds(upstream, di.client_ids),
        ),
        refresh=_refresh(reader, upstream, di.refresh_lifetime_seconds),
        tls=tls,
        metrics=_metrics(reader),
        housekeeping_interval_seconds=reader.number(
            "HOUSEKEEPING_INTERVAL", 300.0, minimum=1, maximum=86400
        ),
        login_flow=login_flow,
        di=di,
        limits=_limits(reader),
        serving=serving,
        stream=read_stream_settings(reader),
        webhooks=read_webhook_settings(reader, production=serving.production),
    )
