"""The settings that decide how exposed a replica is: the health listener, reflection,
connection limits, the deployment environment, the log level, secrets read from files, and
the refusals that keep development shortcuts out of production.

Kept apart from auth_service.config (which reads everything else) so each stays readable;
config.load_settings calls in here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from garmin_client.env import ConfigError, EnvReader, read_secret_file
from garmin_client.hosts import is_loopback_host

PREFIX = "GARMIN_AUTH_"
# The gRPC server's threads for our RPCs (auth_service.server). A WatchSessionEvents stream
# holds one for its whole life, so at most half of them may watch: the rest serve the unary
# RPCs (leases, status), which must never queue behind watchers.
RPC_THREADS = 32
MAX_WATCHERS_LIMIT = RPC_THREADS // 2
DEFAULT_HEALTH_LISTEN = "0.0.0.0:8081"
HEALTH_LISTEN_OFF = "off"
DEFAULT_MAX_CONNECTION_AGE_SECONDS = 300.0
PRODUCTION = "production"
# Production serves plaintext gRPC beyond loopback only with this flag (a mesh encrypts).
PLAINTEXT_LISTEN_FLAG = "ALLOW_PLAINTEXT_LISTEN"
ENVIRONMENTS = frozenset({"development", "staging", PRODUCTION})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Variables that carry a secret; each may instead be read from the file named by
# <NAME>_FILE, the way Kubernetes mounts a Secret as files.
SECRET_VARIABLES = (
    "ENCRYPTION_KEYS",
    "DATABASE_URL",
    "OAUTH_CONSUMER_KEY",
    "OAUTH_CONSUMER_SECRET",
)
FILE_SUFFIX = "_FILE"


class ReflectionMode(Enum):
    """Who may use server reflection (GARMIN_AUTH_REFLECTION)."""

    # Any caller of the callers file, whatever its role (the default).
    AUTHENTICATED = "authenticated"
    # Anyone who reaches the port, without credentials.
    OPEN = "open"
    # Not served at all.
    OFF = "off"


@dataclass(frozen=True)
class ServingSettings:
    """How this replica faces the network."""

    # The plaintext health-only gRPC listener (None: none). load_settings defaults it to
    # 0.0.0.0:8081; a Settings built in code (tests) has none unless asked.
    health_listen: str | None = None
    reflection: ReflectionMode = ReflectionMode.AUTHENTICATED
    # Connections are closed (after a grace period) when they reach this age, so a Service
    # spreads long-lived workers over new replicas and no connection pins a thread forever.
    max_connection_age_seconds: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS
    environment: str = "development"

    @property
    def production(self) -> bool:
        return self.environment == PRODUCTION


def with_secret_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """`env` with every GARMIN_AUTH_<SECRET>_FILE replaced by the file's content under
    GARMIN_AUTH_<SECRET>; both set is a ConfigError (which one wins would be a guess)."""
    resolved: dict[str, str] | None = None
    for name in SECRET_VARIABLES:
        file_variable = PREFIX + name + FILE_SUFFIX
        path = (env.get(file_variable) or "").strip()
        if not path:
            continue
        if (env.get(PREFIX + name) or "").strip():
            raise ConfigError(file_variable, f"set either {PREFIX}{name} or {file_variable}")
        # Stripped (a mounted Secret often ends with a newline), size-capped (a path such as
        # /dev/zero would fill the memory), never waiting on a FIFO nobody writes to. Empty
        # is refused: a Secret whose key was left empty is a mistake, never "unset" (an empty
        # database URL would otherwise fall back to a local SQLite file and run there).
        value = read_secret_file(file_variable, path)
        if resolved is None:
            resolved = dict(env)
        resolved[PREFIX + name] = value
        # Resolved once: reading the result again changes nothing.
        del resolved[file_variable]
    return env if resolved is None else resolved


def without_secret_files(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the GARMIN_AUTH_<SECRET>_FILE variables: for a command that needs no
    secret (health-check), or when reading them failed (check-config's other checks)."""
    names = {PREFIX + name + FILE_SUFFIX for name in SECRET_VARIABLES}
    return {key: value for key, value in env.items() if key not in names}


def is_loopback_listen(listen: str) -> bool:
    """Whether host:port only accepts connections from this machine."""
    return is_loopback_host(listen.rpartition(":")[0].strip("[]"))


MAX_PORT = 65535


def is_host_port(value: str) -> bool:
    """Whether `value` is host:port, the port in ASCII digits (str.isdigit() also takes a
    superscript two, which int() refuses, and Arabic-Indic digits, which it reads as ours)."""
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isascii() and port.isdigit() and int(port) <= MAX_PORT)


def _health_listen(reader: EnvReader) -> str | None:
    value = reader.get("HEALTH_LISTEN") or DEFAULT_HEALTH_LISTEN
    if value.lower() == HEALTH_LISTEN_OFF:
        return None
    if not is_host_port(value):
        raise reader.error("HEALTH_LISTEN", f"expected host:port or off, got {value!r}")
    return value


def read_serving_settings(reader: EnvReader) -> ServingSettings:
    reflection = (reader.get("REFLECTION") or ReflectionMode.AUTHENTICATED.value).lower()
    if reflection not in {mode.value for mode in ReflectionMode}:
        raise reader.error("REFLECTION", f"expected authenticated, open or off, got {reflection!r}")
    environment = (reader.get("ENVIRONMENT") or "development").lower()
    if environment not in ENVIRONMENTS:
        raise reader.error(
            "ENVIRONMENT", f"expected one of {', '.join(sorted(ENVIRONMENTS))}, got {environment!r}"
        )
    if environment == PRODUCTION and reflection == ReflectionMode.OPEN.value:
        # Anyone who reaches the port would read the whole API: a development convenience.
        raise reader.error(
            "REFLECTION", "production refuses open reflection; use authenticated or off"
        )
    return ServingSettings(
        health_listen=_health_listen(reader),
        reflection=ReflectionMode(reflection),
        max_connection_age_seconds=reader.number(
            "MAX_CONNECTION_AGE", DEFAULT_MAX_CONNECTION_AGE_SECONDS, minimum=10, maximum=86400
        ),
        environment=environment,
    )


def check_development_flag(
    reader: EnvReader, *, allow_unauthenticated: bool, listen: str, production: bool
) -> None:
    """GARMIN_AUTH_ALLOW_UNAUTHENTICATED gives every caller every role: refused unless only
    this machine can connect, and always in production."""
    if not allow_unauthenticated:
        return
    if production:
        raise reader.error(
            "ALLOW_UNAUTHENTICATED", "is refused when GARMIN_AUTH_ENVIRONMENT=production"
        )
    if not is_loopback_listen(listen):
        raise reader.error(
            "ALLOW_UNAUTHENTICATED",
            f"is refused: GARMIN_AUTH_LISTEN ({listen}) is not a loopback address "
            "(127.0.0.0/8, ::1, localhost)",
        )


def plaintext_listen_refusal(
    *, tls: bool, listen: str, production: bool, mesh_encrypts: bool
) -> str | None:
    """Why production refuses to serve gRPC unencrypted beyond this machine (None: it
    does not): caller tokens, Garmin passwords and access tokens would cross the network."""
    if not production or tls or mesh_encrypts or is_loopback_listen(listen):
        return None
    return (
        f"production refuses plaintext gRPC on {listen}, which is not a loopback address: "
        "caller tokens, Garmin passwords and access tokens would cross the network "
        "unencrypted. Set GARMIN_AUTH_TLS_CERT and GARMIN_AUTH_TLS_KEY, or "
        f"{PREFIX}{PLAINTEXT_LISTEN_FLAG}=true where a service mesh encrypts the pod's traffic"
    )


def plaintext_upstream(base_url: str | None, di_plain_http: bool) -> list[str]:
    """The settings that would send Garmin passwords and tokens unencrypted."""
    found = []
    if base_url is not None and base_url.lower().startswith("http://"):
        found.append(f"{PREFIX}UPSTREAM_URL is http://")
    if di_plain_http:
        found.append(f"{PREFIX}DI_PLAIN_HTTP is set")
    return found


def check_plaintext_upstream(found: list[str], *, production: bool) -> None:
    """An unencrypted upstream is for the emulator; in production it is a configuration
    error (the warning for other environments is logged at start-up and by check-config)."""
    if found and production:
        raise ConfigError(
            PREFIX + "ENVIRONMENT",
            f"production refuses a plaintext upstream ({'; '.join(found)}): Garmin passwords "
            "and tokens would cross the network unencrypted",
        )


def load_log_level(env: Mapping[str, str]) -> int:
    """GARMIN_AUTH_LOG_LEVEL (default INFO) as a logging level number."""
    value = (env.get(PREFIX + "LOG_LEVEL") or "INFO").strip().upper()
    if value not in LOG_LEVELS:
        raise ConfigError(PREFIX + "LOG_LEVEL", f"expected one of {', '.join(LOG_LEVELS)}")
    return int(logging.getLevelName(value))
