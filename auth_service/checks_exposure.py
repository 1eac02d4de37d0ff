"""check-config's checks of what the service exposes and whom it lets in: callers, TLS, the
upstream it sends secrets to, metrics, and the serving settings (health listener,
reflection, connection age, development shortcuts). The database and key checks are in
auth_service.checks, which runs these after its own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from auth_service.api.callers import CallerRegistry, CallersFileError
from auth_service.config import PREFIX, TlsSettings, check_host_port, load_tls_settings
from auth_service.serving_config import (
    PLAINTEXT_LISTEN_FLAG,
    PRODUCTION,
    is_loopback_listen,
    plaintext_listen_refusal,
    plaintext_upstream,
    read_serving_settings,
)
from auth_service.tls import TlsFilesError, load_material
from garmin_client.env import ConfigError, EnvReader
from garmin_client.settings import upstream_url_problem

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
DEFAULT_LISTEN = "127.0.0.1:50051"


class CheckFailed(Exception):
    """A check found a problem; the message is the line's detail."""


class _Exposure:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(PREFIX + name, "").strip()
        return value or None

    def callers(self) -> str:
        path = self.raw("CALLERS_FILE")
        if (self.raw("ALLOW_UNAUTHENTICATED") or "").lower() in TRUE_VALUES:
            listen = self.raw("LISTEN") or DEFAULT_LISTEN
            if not is_loopback_listen(listen):
                raise CheckFailed(
                    f"GARMIN_AUTH_ALLOW_UNAUTHENTICATED is set and GARMIN_AUTH_LISTEN ({listen}) "
                    "is not a loopback address: anyone who reaches the port would get every role"
                )
            if path is None:
                return (
                    "no callers file; GARMIN_AUTH_ALLOW_UNAUTHENTICATED gives every caller "
                    f"every role (development only, loopback {listen})"
                )
        if path is None:
            raise CheckFailed("GARMIN_AUTH_CALLERS_FILE is not set")
        try:
            entries = CallerRegistry(Path(path)).entries
        except CallersFileError as exc:
            # As `serve` says it (auth_service.server.load_callers): the variable to fix.
            raise ConfigError(PREFIX + "CALLERS_FILE", str(exc)) from None
        by_certificate = [entry for entry in entries if entry.cert_name is not None]
        tls = self._tls_settings_or_none()
        if by_certificate and (tls is None or not tls.mutual):
            names = ", ".join(entry.caller.name for entry in by_certificate)
            raise CheckFailed(
                f"{path}: caller(s) {names} use cert_name, but mutual TLS is off "
                "(set GARMIN_AUTH_TLS_CLIENT_CA), so they can never authenticate"
            )
        return (
            f"{path}: {len(entries)} caller(s), {len(entries) - len(by_certificate)} by token, "
            f"{len(by_certificate)} by client certificate"
        )

    def _tls_settings_or_none(self) -> TlsSettings | None:
        try:
            return load_tls_settings(self.env)
        except ConfigError:
            return None

    def tls(self) -> str:
        settings = load_tls_settings(self.env)
        if settings is None:
            listen = self.raw("LISTEN") or DEFAULT_LISTEN
            refusal = plaintext_listen_refusal(
                tls=False,
                listen=listen,
                production=(self.raw("ENVIRONMENT") or "").lower() == PRODUCTION,
                mesh_encrypts=(self.raw(PLAINTEXT_LISTEN_FLAG) or "").lower() in TRUE_VALUES,
            )
            if refusal is not None:
                raise CheckFailed(refusal)
            beyond = "" if is_loopback_listen(listen) else f"; WARNING: {listen} is not loopback"
            return "off (plaintext gRPC; set GARMIN_AUTH_TLS_CERT and GARMIN_AUTH_TLS_KEY)" + beyond
        try:
            material = load_material(settings)
        except TlsFilesError as exc:
            raise CheckFailed(str(exc)) from None
        now = datetime.now(UTC)
        if material.not_after < now:
            raise CheckFailed(f"the certificate has expired: {material.describe()}")
        if material.not_before > now:
            raise CheckFailed(f"the certificate is not valid yet: {material.describe()}")
        if settings.mutual:
            authorities = "; ".join(material.client_ca_subjects)
            return f"mutual TLS; certificate {material.describe()}; client CA {authorities}"
        return f"TLS; certificate {material.describe()}"

    def upstream(self) -> str:
        url = self.raw("UPSTREAM_URL")
        plain = plaintext_upstream(url, (self.raw("DI_PLAIN_HTTP") or "").lower() in TRUE_VALUES)
        production = (self.raw("ENVIRONMENT") or "").lower() == "production"
        if plain and production:
            raise CheckFailed(
                f"{'; '.join(plain)}, and GARMIN_AUTH_ENVIRONMENT=production refuses a "
                "plaintext upstream (Garmin passwords and tokens would travel unencrypted)"
            )
        warning = f"; WARNING: {'; '.join(plain)}: unencrypted (emulator only)" if plain else ""
        if url is None:
            return "Garmin Connect itself (GARMIN_AUTH_UPSTREAM_URL unset)" + warning
        problem = upstream_url_problem(url)
        if problem is not None:
            raise CheckFailed(f"GARMIN_AUTH_UPSTREAM_URL {problem}")
        parts = urlsplit(url)
        port = parts.port
        where = f"{parts.hostname}" + (f":{port}" if port is not None else "")
        return f"every request to Garmin goes to {parts.scheme}://{where}{parts.path}" + warning

    def metrics(self) -> str:
        listen = self.raw("METRICS_LISTEN")
        if listen is None:
            return "off (set GARMIN_AUTH_METRICS_LISTEN=host:port to serve /metrics)"
        return f"/metrics on {check_host_port('METRICS_LISTEN', listen)}"

    def serving(self) -> str:
        serving = read_serving_settings(EnvReader(self.env, PREFIX))
        health = serving.health_listen or "off (probes must use the main port)"
        return (
            f"health listener {health}; reflection {serving.reflection.value}; connections "
            f"recycled after {serving.max_connection_age_seconds:g} s; environment "
            f"{serving.environment}"
        )


def exposure_checks(env: Mapping[str, str]) -> list[tuple[str, Callable[[], str]]]:
    """(name, check) for each line, in order."""
    checks = _Exposure(env)
    return [
        ("callers", checks.callers),
        ("tls", checks.tls),
        ("upstream", checks.upstream),
        ("metrics", checks.metrics),
        ("serving", checks.serving),
    ]
