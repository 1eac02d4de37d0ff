"""The worker's configuration: command-line flags plus GARMIN_SYNC_* environment variables.

Anything missing or malformed raises ConfigError naming the flag or variable; the CLI prints
that one line and exits 2. Secrets (the bearer token, the OAuth consumer secret, a sink
password) never appear in a message or a repr.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509

from garmin_client.bearer_tokens import UNSENDABLE, is_sendable
from garmin_client.env import ConfigError, EnvReader, read_secret_file
from garmin_client.hosts import is_loopback_host
from garmin_client.pem_keys import EncryptedKey, NoPrivateKey, public_der, unencrypted_private_key
from garmin_client.settings import UpstreamSettings, read_upstream_settings
from garmin_client.url_secrets import redacted_url, unencoded_at_after_password
from sync_worker.client import AuthClientConfig
from sync_worker.control import DEFAULT_MAX_GARMIN_UNAVAILABLE, DEFAULT_MAX_RATE_LIMIT_PAUSE
from sync_worker.postgres_sink import libpq_url
from sync_worker.sinks import UnsafeUserId, check_user_id
from sync_worker.sync import SyncOptions

log = logging.getLogger(__name__)

ENV_PREFIX: Final = "GARMIN_SYNC_"
DEFAULT_TARGET: Final = "127.0.0.1:50051"
# Plaintext beyond this machine, where the network encrypts it (a mesh) or in development:
# dialling the auth service without TLS, and an http:// GARMIN_SYNC_UPSTREAM_URL.
PLAINTEXT_FLAG: Final = "ALLOW_PLAINTEXT"
DEFAULT_CONCURRENCY: Final = 4
MAX_CONCURRENCY: Final = 64
MAX_GARMIN_UNAVAILABLE: Final = 1000
DEFAULT_MIN_SYNC_INTERVAL: Final = timedelta(minutes=15)
DEFAULT_LEASE_TTL: Final = timedelta(minutes=5)
# The service refuses shorter leases (they would expire mid-call).
MIN_LEASE_TTL: Final = timedelta(seconds=5)
MAX_LEASE_TTL: Final = timedelta(hours=1)
MAX_MIN_SYNC_INTERVAL: Final = timedelta(days=30)
# --rate-limit-max-wait: the service's GARMIN_AUTH_RATE_LIMIT_MAX_WAIT allows the same range.
MIN_RATE_LIMIT_MAX_WAIT: Final = 1.0
MAX_RATE_LIMIT_MAX_WAIT: Final = 7 * 86400.0
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Ten years: longer means a typo (and past about 2.7 million years, timedelta overflows).
MAX_DURATION_SECONDS: Final = 3650 * 86400


def parse_duration(text: str, name: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` (a bare number is seconds)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ConfigError(name, f"expected a duration like 90s, 15m, 2h or 1d, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds > MAX_DURATION_SECONDS:
        raise ConfigError(name, f"must be at most {MAX_DURATION_SECONDS // 86400} days")
    return timedelta(seconds=seconds)


def default_holder() -> str:
    """What identifies this worker to operators: the pod (hostname) and the process."""
    return f"{socket.gethostname()}:{os.getpid()}"[:256]


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one `garmin-sync-worker run` needs."""

    auth: AuthClientConfig
    sync: SyncOptions
    users: tuple[str, ...] = ()
    all_users: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    holder: str = field(default_factory=default_holder)
    max_runtime: float | None = None
    min_sync_interval: timedelta = DEFAULT_MIN_SYNC_INTERVAL
    out_dir: Path | None = None
    sink_url: str | None = None
    progress_interval: float = 30.0
    # Users in a row that Garmin's being unavailable may fail before the run gives up.
    max_garmin_unavailable: int = DEFAULT_MAX_GARMIN_UNAVAILABLE
    # The longest pause (seconds) a Retry-After of Garmin's imposes on the run, and the
    # longest wait a release reports to the service.
    rate_limit_max_wait: float = DEFAULT_MAX_RATE_LIMIT_PAUSE

    def __post_init__(self) -> None:
        if self.all_users == bool(self.users):
            raise ConfigError("--user/--all", "give either --user ID (repeatable) or --all")
        if (self.out_dir is None) == (self.sink_url is None):
            raise ConfigError("--out/--sink", "give exactly one of --out DIR or --sink URL")
        if self.sink_url is not None and self.sync.with_files:
            raise ConfigError(
                "--with-files", "needs --out DIR (the PostgreSQL sink keeps summaries)"
            )
        if not 1 <= self.max_garmin_unavailable <= MAX_GARMIN_UNAVAILABLE:
            raise ConfigError(
                "--max-garmin-unavailable", f"must be between 1 and {MAX_GARMIN_UNAVAILABLE}"
            )
        if not MIN_RATE_LIMIT_MAX_WAIT <= self.rate_limit_max_wait <= MAX_RATE_LIMIT_MAX_WAIT:
            raise ConfigError("--rate-limit-max-wait", "must be between 1s and 7d")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigError("--concurrency", f"must be between 1 and {MAX_CONCURRENCY}")
        if not MIN_LEASE_TTL <= self.sync.lease_ttl <= MAX_LEASE_TTL:
            raise ConfigError("--lease-ttl", "must be between 5s and 1h")
        if self.min_sync_interval > MAX_MIN_SYNC_INTERVAL:
            # The service's own limit for LeaseNextSession: above it, every call is refused.
            raise ConfigError("--min-sync-interval", "must be at most 30d")
        if not self.holder or len(self.holder) > 256 or not self.holder.isprintable():  # noqa: PLR2004
            raise ConfigError("--holder", "must be 1-256 printable characters")
        for user in self.users:
            try:
                check_user_id(user)
            except UnsafeUserId as exc:
                raise ConfigError("--user", str(exc)) from None

    def __repr__(self) -> str:
        sink = redacted_url(self.sink_url) if self.sink_url else str(self.out_dir)
        return f"WorkerConfig(auth={self.auth!r}, sink={sink!r}, holder={self.holder!r})"


def rate_limit_max_wait(flag: timedelta | None, env: EnvReader) -> float:
    """--rate-limit-max-wait, else GARMIN_SYNC_RATE_LIMIT_MAX_WAIT, else an hour (seconds)."""
    if flag is not None:
        return flag.total_seconds()
    text = env.get("RATE_LIMIT_MAX_WAIT")
    if text is None:
        return DEFAULT_MAX_RATE_LIMIT_PAUSE
    seconds = parse_duration(text, f"{env.prefix}RATE_LIMIT_MAX_WAIT").total_seconds()
    if not MIN_RATE_LIMIT_MAX_WAIT <= seconds <= MAX_RATE_LIMIT_MAX_WAIT:
        raise env.error("RATE_LIMIT_MAX_WAIT", "must be between 1s and 7d")
    return seconds


def auth_client_config(env: EnvReader, target: str | None, rpc_timeout: float) -> AuthClientConfig:
    ca, cert, key = env.path("TLS_CA"), env.path("TLS_CERT"), env.path("TLS_KEY")
    if ca is None and (cert is not None or key is not None):
        raise env.error("TLS_CERT", "a client certificate needs GARMIN_SYNC_TLS_CA")
    if (cert is None) != (key is None):
        raise env.error("TLS_KEY", "GARMIN_SYNC_TLS_CERT and _KEY go together")
    for name, path in (("TLS_CA", ca), ("TLS_CERT", cert)):
        if path is not None:
            _check_pem_certificates(env, name, path)
    if cert is not None and key is not None:
        _check_pem_key_of(env, key, cert)
    target = target or env.get("AUTH_TARGET") or DEFAULT_TARGET
    if ca is None and not on_this_machine(target) and not env.flag(PLAINTEXT_FLAG):
        # The bearer token (the worker role gets Garmin access tokens) would cross the
        # network in clear: a CA variable dropped by an overlay must not do that silently.
        raise env.error(
            "TLS_CA",
            "is required to reach the auth service beyond this machine (the bearer token "
            f"would go unencrypted); on a network that encrypts it, set {ENV_PREFIX}"
            f"{PLAINTEXT_FLAG}=true",
        )
    return AuthClientConfig(
        target=target,
        token=auth_token(env),
        timeout_seconds=rpc_timeout,
        tls_ca_file=ca,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_server_name=env.get("TLS_SERVER_NAME"),
    )


def upstream_settings(env: EnvReader) -> UpstreamSettings:
    """GARMIN_SYNC_UPSTREAM_* (garmin_client.settings), refusing an http:// UPSTREAM_URL
    beyond this machine unless GARMIN_SYNC_ALLOW_PLAINTEXT: every user's Garmin access token
    goes there as a bearer. The service refuses the same in production and warns elsewhere;
    the worker has no environment setting, so it asks for the opt-in it already has."""
    settings = read_upstream_settings(env, oauth_consumer=False)
    url = settings.base_url
    if url is None:
        return settings
    parts = urlsplit(url)  # checked by read_upstream_settings: http(s) with a host
    if parts.scheme != "http" or is_loopback_host(parts.hostname or ""):
        return settings
    if not env.flag(PLAINTEXT_FLAG):
        # Not quoted, as upstream_url_problem never quotes it.
        raise env.error(
            "UPSTREAM_URL",
            "is http:// to a host beyond this machine (users' Garmin access tokens would "
            f"go unencrypted): use https://, or on a network that encrypts it set {ENV_PREFIX}"
            f"{PLAINTEXT_FLAG}=true",
        )
    log.warning(
        "%sUPSTREAM_URL is http:// beyond this machine (%s%s): users' Garmin access tokens "
        "cross the network unencrypted",
        ENV_PREFIX,
        ENV_PREFIX,
        PLAINTEXT_FLAG,
    )
    return settings


def on_this_machine(target: str) -> bool:
    """Whether a gRPC target (host:port, dns:///host:port, ipv4:/ipv6: address lists,
    unix:path) names only this machine: loopback addresses, localhost or a Unix socket."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    scheme, sep, rest = target.partition(":")
    if sep and scheme in {"ipv4", "ipv6"}:
        return all(is_loopback_host(_host_of(address)) for address in rest.split(","))
    if sep and scheme == "dns":
        # dns:[//authority/]host[:port]
        target = rest.removeprefix("//").partition("/")[2] if rest.startswith("//") else rest
    return is_loopback_host(_host_of(target))


def _host_of(address: str) -> str:
    """The host of host, host:port, [v6] or [v6]:port (a bare v6 address is its own host)."""
    if address.startswith("["):
        return address[1 : address.find("]")]
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address


def _check_pem_certificates(env: EnvReader, name: str, path: Path) -> None:
    """Refuse a file that holds no PEM certificate (a wrong Secret key, a truncated mount):
    gRPC would fail every handshake, and the run would end "auth service unreachable", sending
    the operator to the network instead of the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise env.error(name, f"cannot read {path} ({exc.strerror})") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise env.error(name, f"{path} holds no PEM certificate")


def _check_pem_key_of(env: EnvReader, key: Path, cert: Path) -> None:
    """Refuse a key file that holds no unencrypted PEM private key, or the key of another
    certificate than GARMIN_SYNC_TLS_CERT's: as for the certificates, every handshake would
    fail and the run would blame the network."""
    try:
        data = key.read_bytes()
    except OSError as exc:
        raise env.error("TLS_KEY", f"cannot read {key} ({exc.strerror})") from None
    try:
        private = unencrypted_private_key(data)
    except EncryptedKey:
        raise env.error("TLS_KEY", f"{key} is encrypted (gRPC needs it unencrypted)") from None
    except NoPrivateKey:
        raise env.error("TLS_KEY", f"{key} holds no PEM private key") from None
    certificate = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    if public_der(private.public_key()) != public_der(certificate.public_key()):
        raise env.error("TLS_KEY", f"{key} is not the key of GARMIN_SYNC_TLS_CERT's certificate")


def auth_token(env: EnvReader) -> str:
    """The bearer token: GARMIN_SYNC_AUTH_TOKEN, or the content of the file that
    GARMIN_SYNC_AUTH_TOKEN_FILE names (a Kubernetes Secret mounted as a file, so the token is in
    no environment a child process or `kubectl describe` would show). Both set is an error:
    which one wins would be a guess."""
    path = env.get("AUTH_TOKEN_FILE")
    if path is None:
        token = env.get("AUTH_TOKEN")
        if token is None:
            raise env.error(
                "AUTH_TOKEN",
                f"is required but not set (or name its file in {env.prefix}AUTH_TOKEN_FILE)",
            )
        return _checked_token(env, "AUTH_TOKEN", token)
    if env.get("AUTH_TOKEN") is not None:
        raise env.error("AUTH_TOKEN_FILE", f"set either {env.prefix}AUTH_TOKEN or this, not both")
    # Size-capped (a path like /dev/zero would fill the memory), and never waiting on a FIFO
    # nobody writes to.
    token = read_secret_file(f"{env.prefix}AUTH_TOKEN_FILE", path)
    return _checked_token(env, "AUTH_TOKEN_FILE", token)


def _checked_token(env: EnvReader, name: str, token: str) -> str:
    """Refuse a token gRPC would not send (one that is not printable ASCII, such as a byte
    that is not UTF-8 or a stray control character, made every call fail, a lone surrogate
    even with a UnicodeEncodeError that killed the sync threads); take every token the
    service's `hash-token` takes. The token itself is never quoted."""
    if not is_sendable(token):
        raise env.error(name, UNSENDABLE)
    return token


def check_sink_url(url: str) -> str:
    try:
        libpq_url(url)
    except ValueError as exc:
        raise ConfigError("--sink", str(exc)) from None
    if unencoded_at_after_password(url):
        # Read two ways (libpq, our redaction): part of the password could show as the host.
        raise ConfigError("--sink", "percent-encode the password's special characters (@ is %40)")
    return url
