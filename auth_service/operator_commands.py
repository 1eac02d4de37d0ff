"""Small operator commands: `health-check` (the container's HEALTHCHECK) and
`new-caller-token` (a fresh bearer token and its callers-file entry)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from auth_service.api.callers import ROLES, CallersFileError, parse_callers, token_sha256
from auth_service.config import load_listen, load_tls_settings
from auth_service.serving_config import (
    PREFIX,
    ServingSettings,
    read_serving_settings,
    without_secret_files,
)
from garmin_client.bearer_tokens import UNSENDABLE, is_sendable
from garmin_client.env import ConfigError, EnvReader

if TYPE_CHECKING:
    # Only for the annotation: these commands never run the rotation's storage code.
    from auth_service.storage.key_rotation import RotationReport

# Shorter bearer tokens are refused by new-caller-token and hash-token. Entries already in a
# callers file are hashes, so their tokens cannot be checked.
MIN_TOKEN_LENGTH = 32
# 32 random bytes: 43 URL-safe characters.
TOKEN_BYTES = 32
HEALTH_CHECK_TIMEOUT_SECONDS = 3.0
HEALTH_SERVICES = ("liveness", "readiness")
# For a channel to a port on this machine: gRPC routes even a loopback target through a proxy
# the environment names (http_proxy, https_proxy, grpc_proxy), which would report a serving
# listener down and carry plaintext calls (tokens, passwords) to the proxy's host. The
# worker's channel does the same (sync_worker/client.py).
NO_PROXY_OPTIONS = (("grpc.enable_http_proxy", 0),)


def health_check(service: str, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Ask this machine's health listener about `service`: (SERVING?, one line). With the
    listener off, the main port when it is plaintext (health is served there too)."""
    import grpc  # noqa: PLC0415 - only this command needs gRPC loaded
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    try:
        listen = _probed_listener(env)
    except ConfigError as exc:
        # A probe answers 0 or 1 (Docker reserves 2 in a HEALTHCHECK): not SERVING, and why.
        return False, f"{service}: cannot ask ({exc})"
    if listen is None:
        return False, (
            f"{service}: cannot ask: {PREFIX}HEALTH_LISTEN is off and the main port needs TLS"
        )
    host, _, port = listen.rpartition(":")
    # The listener may bind every address; the probe always asks over loopback.
    target = f"[::1]:{port}" if host.strip("[]") == "::1" else f"127.0.0.1:{port}"
    with grpc.insecure_channel(target, options=NO_PROXY_OPTIONS) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=HEALTH_CHECK_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            return False, f"{service}: no answer from {target} ({error.code().name})"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return answer.status == health_pb2.HealthCheckResponse.SERVING, f"{service}: {status}"


def _probed_listener(env: Mapping[str, str] | None) -> str | None:
    """The health listener's host:port, else the main port's when plaintext (None: none)."""
    # The probe runs every few seconds and needs no secret: a secret file it cannot read
    # (not mounted yet, rotated) must not fail it, nor a pipe be read by it.
    env = without_secret_files(os.environ if env is None else env)
    serving = _serving(env)
    if serving.health_listen is not None:
        return serving.health_listen
    if load_tls_settings(env) is not None:
        return None
    return load_listen(env)


def _serving(env: Mapping[str, str]) -> ServingSettings:
    return read_serving_settings(EnvReader(env, PREFIX))


def check_token(token: str) -> None:
    """Refuse a bearer token no caller could use: a character gRPC metadata does not carry
    (it takes printable ASCII only; a binary paste would otherwise be hashed, or fail to be),
    or fewer than MIN_TOKEN_LENGTH characters. The token itself is never in the message."""
    if not is_sendable(token):
        raise ConfigError("token", UNSENDABLE)
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            "token",
            f"is {len(token)} characters; bearer tokens need at least {MIN_TOKEN_LENGTH} "
            "(use `garmin-auth-service new-caller-token`)",
        )


def new_caller_entry(
    name: str, roles: Sequence[str], user_id_prefix: str | None = None
) -> tuple[str, str]:
    """A fresh token and the callers-file entry that admits it (only its sha256)."""
    if not name.strip():
        raise ConfigError("--name", "must not be empty")
    unknown = sorted(set(roles) - ROLES)
    if unknown or not roles:
        raise ConfigError("--role", f"expected roles among {sorted(ROLES)}")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    check_token(token)
    lines = [
        "[[callers]]",
        f"name = {_toml_string(name, '--name')}",
        f'token_sha256 = "{token_sha256(token)}"',
        f"roles = {json.dumps(sorted(set(roles)))}",
    ]
    if user_id_prefix is not None:
        lines.append(f"user_id_prefix = {_toml_string(user_id_prefix, '--user-id-prefix')}")
    entry = "\n".join(lines)
    # Read back by the service's own parser: an entry it would refuse, pasted into the live
    # file, would make the service refuse every caller.
    try:
        parse_callers(entry, "the new entry")
    except CallersFileError as exc:
        option = "--user-id-prefix" if "user_id_prefix" in str(exc) else "--name"
        raise ConfigError(option, str(exc).removeprefix("the new entry: ")) from None
    return token, entry


def _toml_string(value: str, option: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, as long as characters outside the
    BMP are written as they are (JSON would write surrogate pairs, which TOML refuses). JSON
    escapes every control character TOML refuses raw but DEL, which is escaped here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # An argument whose bytes are not UTF-8 arrives holding lone surrogates: printed, they
        # made an entry that is not UTF-8, and a callers file the service refuses whole.
        raise ConfigError(option, "is not UTF-8 text") from None
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def rotation_lines(report: RotationReport) -> list[str]:
    """What `rotate-keys` did, in lines an operator reads: what was re-encrypted, then each
    user whose secret still needs an old key, by name (the users the README says it names)."""
    lines = [
        f"re-encrypted under key {report.primary_kid!r}: {report.sessions_rotated} session(s), "
        f"{report.challenges_rotated} MFA challenge(s); {report.conflicts} row(s) another "
        "writer changed meanwhile, left as written"
    ]
    for what, user_ids in (
        ("session(s) no key opens", report.undecryptable_session_user_ids),
        ("MFA challenge(s) no key opens", report.undecryptable_challenge_user_ids),
        (
            "row(s) still under an old key after the last pass (written behind the scan: run "
            "again once no replica has the old primary key)",
            report.unfinished_user_ids,
        ),
    ):
        if user_ids:
            lines.append(f"{len(user_ids)} {what}: user(s) {', '.join(user_ids)}")
    lines.append(
        "done: every stored secret is under the primary key"
        if report.complete
        else "not done: keep the old key(s) until a run says done"
    )
    return lines
