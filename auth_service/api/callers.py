"""Who may call: the callers file and the role each RPC needs.

The callers file (GARMIN_AUTH_CALLERS_FILE) is TOML:

    [[callers]]
    name = "web-app"
    token_sha256 = "<hex sha256 of the bearer token>"
    roles = ["admin"]

    [[callers]]
    name = "sync-worker"
    cert_name = "sync-worker.garmin-auth.svc"   # mutual TLS: client certificate CN or DNS SAN
    roles = ["worker"]
    user_id_prefix = "tenant-a:"                # optional: may lease only these users

Each entry has exactly one of `token_sha256` and `cert_name`. The file holds only hashes and
names, so it is no secret by itself.

Roles: `worker` leases sessions and gets an access token per grant, never the session's
long-lived secrets; `worker_full` (legacy workers that refresh by themselves) also gets the
full session on grants and may ReportRefreshed. An entry with `user_id_prefix` may lease (and
read the status of) only users whose id starts with it; without one, every user.

The file is re-read when it changes, so a revoked token or certificate name stops working
without a restart, in open WatchSessionEvents streams too (see `generation`). An edit that
cannot be read or parsed fails closed: every caller is refused (UNAUTHENTICATED
CALLERS_FILE_INVALID) and each reload attempt logs an ERROR until the file is fixed; keeping
the old entries would keep a token working that the edit meant to revoke.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
import tomllib
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from auth_service.domain.audit import CALLER_LENGTH
from auth_service.domain.errors import CallerForbidden, CallersFileInvalid, CallerUnauthenticated
from auth_service.domain.validation import in_scope
from garmin_client.user_ids import is_user_id

log = logging.getLogger(__name__)

ADMIN, WORKER, WORKER_FULL, VIEWER = "admin", "worker", "worker_full", "viewer"
ROLES = frozenset({ADMIN, WORKER, WORKER_FULL, VIEWER})
_WORKERS = frozenset({WORKER, WORKER_FULL})

# The roles allowed to call each RPC of garmin_auth.v1.GarminAuthService.
RPC_ROLES: dict[str, frozenset[str]] = {
    "Login": frozenset({ADMIN}),
    "SubmitMfa": frozenset({ADMIN}),
    "ImportSession": frozenset({ADMIN}),
    "ExchangeServiceTicket": frozenset({ADMIN}),
    "DeleteSession": frozenset({ADMIN}),
    "GetStatus": frozenset({ADMIN, VIEWER}) | _WORKERS,
    "ListSessions": frozenset({ADMIN, VIEWER}),
    "LeaseSession": _WORKERS,
    "LeaseNextSession": _WORKERS,
    "RenewLease": _WORKERS,
    "RefreshLease": _WORKERS,
    "ReleaseLease": _WORKERS,
    "ReportRefreshed": frozenset({WORKER_FULL}),
    "ReportInvalidated": _WORKERS,
    "ListAuditEvents": frozenset({ADMIN, VIEWER}),
    "WatchSessionEvents": frozenset({ADMIN, VIEWER}),
}

# GetStatus with validate=true calls Garmin and may refresh or end the session: not a read,
# so only these roles may ask for it (issue 14); every GetStatus role may read.
VALIDATE_ROLES = frozenset({ADMIN})

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# A common name or DNS name: words of A-Z a-z 0-9 . _ @ : + - separated by single spaces.
# No "*": an entry names one client, and a wildcard certificate must not stand for it.
_CERT_NAME = re.compile(r"^[A-Za-z0-9._@:+-]+( [A-Za-z0-9._@:+-]+)*$")
_RELOAD_CHECK_SECONDS = 2.0
# How much of a certificate's names a refusal quotes (_some_names); 253: a DNS name's longest.
_ECHOED_NAMES = 5
_ECHOED_NAME_LENGTH = 253


class CallersFileError(ValueError):
    """The callers file is missing or malformed."""


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; `user_id_prefix` (None: every user) scopes which users it
    may lease."""

    name: str
    roles: frozenset[str]
    user_id_prefix: str | None = None

    @property
    def full_sessions(self) -> bool:
        """Whether grants hand this caller the whole session, not just an access token."""
        return WORKER_FULL in self.roles

    def may_reach(self, user_id: str) -> bool:
        return in_scope(user_id, self.user_id_prefix)


# The caller of the RPC being served (set by the interceptor); None outside an RPC.
current_caller: ContextVar[Caller | None] = ContextVar("current_caller", default=None)


@dataclass(frozen=True, repr=False)
class _Entry:
    caller: Caller
    # Exactly one of the two is set.
    token_sha256: bytes | None = None
    cert_name: str | None = None


DEVELOPMENT_CALLER = Caller(name="development-unauthenticated", roles=ROLES)


def token_sha256(token: str) -> str:
    """The hex digest to put in the callers file for a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_callers(text: str, source: str) -> list[_Entry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CallersFileError(f"{source}: not valid TOML ({exc})") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables by recursion.
        raise CallersFileError(f"{source}: not valid TOML (nested too deeply)") from None
    raw = data.get("callers")
    if not isinstance(raw, list) or not raw:
        raise CallersFileError(f"{source}: expected at least one [[callers]] table")
    entries = [
        _parse_entry(item, f"{source}: callers entry {index}")
        for index, item in enumerate(raw, start=1)
    ]
    names = [entry.caller.name for entry in entries]
    if len(set(names)) != len(names):
        raise CallersFileError(f"{source}: caller names must be unique")
    # Two entries for one certificate name would make the caller (and its roles) depend on
    # the order of the file.
    cert_names = [entry.cert_name for entry in entries if entry.cert_name is not None]
    if len(set(cert_names)) != len(cert_names):
        raise CallersFileError(f"{source}: cert_name values must be unique")
    # The same for one token in two entries: the last would win, roles and scope included.
    digests = [entry.token_sha256 for entry in entries if entry.token_sha256 is not None]
    if len(set(digests)) != len(digests):
        raise CallersFileError(f"{source}: token_sha256 values must be unique")
    return entries


# The keys an entry may hold. Any other is refused: a misspelt user_id_prefix read as absent
# would give that caller every user (fail open).
_ENTRY_KEYS = frozenset({"name", "token_sha256", "cert_name", "roles", "user_id_prefix"})


def _parse_entry(item: object, where: str) -> _Entry:
    if not isinstance(item, dict):
        raise CallersFileError(f"{where}: not a table")
    unknown = sorted(str(key) for key in item if key not in _ENTRY_KEYS)
    if unknown:
        # Key names only, never values (a value could be a token pasted in the wrong place).
        raise CallersFileError(
            f"{where}: unknown key(s) {', '.join(repr(key[:40]) for key in unknown)}; "
            f"an entry holds {', '.join(sorted(_ENTRY_KEYS))}"
        )
    name, digest, roles = item.get("name"), item.get("token_sha256"), item.get("roles")
    cert_name, prefix = item.get("cert_name"), item.get("user_id_prefix")
    if not isinstance(name, str) or not name.strip():
        raise CallersFileError(f"{where}: name must be a non-empty string")
    # Audit events and lease bindings keep CALLER_LENGTH characters of the name: two longer
    # names that start alike would be one caller there (each could use the other's leases).
    # The entry is named by position only: the name is what is wrong with it.
    if len(name) > CALLER_LENGTH:
        raise CallersFileError(
            f"{where}: name is {len(name)} characters; at most {CALLER_LENGTH} are allowed"
        )
    if (digest is None) == (cert_name is None):
        raise CallersFileError(f"{where} ({name}): give exactly one of token_sha256 and cert_name")
    if (
        not isinstance(roles, list)
        or not roles
        or not all(isinstance(r, str) and r in ROLES for r in roles)
    ):
        raise CallersFileError(
            f"{where} ({name}): roles must be a non-empty list of {sorted(ROLES)}"
        )
    # A prefix is the start of a user id: non-empty, and only characters user ids may hold.
    if prefix is not None and (not isinstance(prefix, str) or not is_user_id(prefix)):
        raise CallersFileError(
            f"{where} ({name}): user_id_prefix must be the non-empty start of a user id"
        )
    caller = Caller(name, frozenset(roles), prefix)
    if cert_name is not None:
        if not isinstance(cert_name, str) or not _CERT_NAME.match(cert_name):
            raise CallersFileError(
                f"{where} ({name}): cert_name must be a certificate common name or DNS name"
            )
        return _Entry(caller, cert_name=_normalise_cert_name(cert_name))
    if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
        raise CallersFileError(f"{where} ({name}): token_sha256 must be 64 hex characters")
    return _Entry(caller, token_sha256=bytes.fromhex(digest.lower()))


def _normalise_cert_name(name: str) -> str:
    # DNS names compare case-insensitively; common names are compared the same way so that
    # one entry covers a certificate whatever its issuer's capitalisation.
    return name.strip().lower()


def _some_names(names: set[str]) -> str:
    """The first few of a certificate's names, each cut to a DNS name's length, for a refusal:
    a certificate may carry any number of names of any length, and an answer whose metadata
    passes gRPC's 8 KiB limit reaches the caller as RESOURCE_EXHAUSTED, not as the refusal."""
    shown = [
        name if len(name) <= _ECHOED_NAME_LENGTH else name[:_ECHOED_NAME_LENGTH] + "..."
        for name in sorted(names)[:_ECHOED_NAMES]
    ]
    hidden = len(names) - len(shown)
    return ", ".join(shown) + (f" and {hidden} more" if hidden else "")


def _signature(stat: os.stat_result) -> tuple[int, ...]:
    """What tells an edit of the file: its size and modification time, which a copy keeping
    times (cp -p, rsync -a, tar) can leave as they were for a revoking edit of the same size;
    so also its inode (a Secret's update swaps the file) and change time, which nothing can
    set back."""
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns)


class CallerRegistry:
    """Authenticates bearer tokens against the callers file and authorises RPCs."""

    def __init__(self, path: Path | None, *, allow_unauthenticated: bool = False) -> None:
        self._path = path
        self._allow_unauthenticated = allow_unauthenticated
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self._signature: tuple[int, ...] | None = None
        self._checked_at = 0.0
        # Why the file on disk is unusable (None: the entries are the file's).
        self._broken: str | None = None
        # Moves whenever the entries in force change (see `generation`).
        self._generation = 0
        if path is not None:
            self._load()

    def _load(self) -> None:
        assert self._path is not None
        try:
            stat = self._path.stat()
            content = self._path.read_bytes()
        except OSError as exc:
            raise CallersFileError(f"{self._path}: cannot read ({exc.strerror})") from None
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CallersFileError(f"{self._path}: not UTF-8 (at byte {exc.start})") from None
        self._entries = parse_callers(text, str(self._path))
        self._signature = _signature(stat)
        self._broken = None
        self._generation += 1

    def _maybe_reload(self) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._checked_at < _RELOAD_CHECK_SECONDS:
                return
            self._checked_at = now
            try:
                stat = self._path.stat()
                signature = _signature(stat)
            except OSError as exc:
                signature = None
                problem = f"{self._path}: cannot read ({exc.strerror})"
            else:
                if signature == self._signature:
                    return
                try:
                    self._load()
                except CallersFileError as exc:
                    problem = str(exc)
                except Exception as exc:  # noqa: BLE001 - whatever it is, fail closed
                    # Keeping the old entries would keep a revoked token working.
                    problem = f"{self._path}: cannot be loaded ({type(exc).__name__})"
                else:
                    log.info("callers file reloaded", extra={"callers": len(self._entries)})
                    return
            # Fail closed: the edit may have been meant to revoke someone.
            self._entries, self._broken, self._signature = [], problem, signature
            self._generation += 1
            log.error("callers file unusable; REFUSING EVERY CALLER until it is fixed: %s", problem)

    def refresh(self) -> str | None:
        """Look at the file again if it is time; why every caller is refused right now (None:
        the file is fine). For the metric, which must not wait for a call."""
        self._maybe_reload()
        return self._broken

    def generation(self) -> int:
        """A number that moves whenever the entries in force change (a reload, or the file
        turning unusable), after looking at the file if it is time. An open stream
        re-authenticates its caller only when it moved, so revoking a token ends streams
        too, at the cost of a comparison per message."""
        self._maybe_reload()
        return self._generation

    @property
    def entries(self) -> list[_Entry]:
        """The entries currently loaded (for `check-config`)."""
        return list(self._entries)

    def authenticate(
        self, authorization: str | None, certificate_names: Sequence[str] = ()
    ) -> Caller:
        """The caller presenting `authorization` ("Bearer <token>") or, without one, the
        caller whose cert_name is among `certificate_names` (the verified client
        certificate's CN and DNS SANs; empty unless mutual TLS is on).

        A bearer token wins over the certificate: under mutual TLS every client needs a
        certificate from the CA, and a token caller (grpcurl, a backend) may share one.
        """
        if self._path is None and self._allow_unauthenticated:
            return DEVELOPMENT_CALLER
        self._maybe_reload()
        if self._broken is not None:
            raise CallersFileInvalid(
                "the service's callers file is invalid; every caller is refused until an "
                "operator fixes it"
            )
        if not authorization and certificate_names:
            return self._by_certificate(certificate_names)
        if not authorization:
            raise CallerUnauthenticated("missing authorization metadata (Bearer token)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise CallerUnauthenticated("authorization metadata must be 'Bearer <token>'")
        presented = hashlib.sha256(token.strip().encode()).digest()
        found: Caller | None = None
        # Compare against every entry, in constant time each, so timing reveals nothing.
        for entry in self._entries:
            if entry.token_sha256 is not None and hmac.compare_digest(
                presented, entry.token_sha256
            ):
                found = entry.caller
        if found is None:
            raise CallerUnauthenticated("unknown bearer token")
        return found

    def _by_certificate(self, certificate_names: Sequence[str]) -> Caller:
        presented = {_normalise_cert_name(name) for name in certificate_names}
        matches = [
            entry
            for entry in self._entries
            if entry.cert_name is not None and entry.cert_name in presented
        ]
        if len(matches) == 1:
            return matches[0].caller
        # Certificate names are no secret; naming them tells the operator which entry to add.
        if not matches:
            raise CallerUnauthenticated(
                f"the client certificate ({_some_names(presented)}) matches no caller"
            )
        # Which caller (roles, scope, leases) it is must not hang on the file's order.
        callers = ", ".join(repr(entry.caller.name) for entry in matches)
        raise CallerUnauthenticated(
            f"the client certificate ({_some_names(presented)}) names several callers "
            f"({callers}); give each caller a certificate of its own"
        )

    @staticmethod
    def authorize(caller: Caller, rpc: str) -> None:
        allowed = RPC_ROLES.get(rpc, frozenset())
        if not caller.roles & allowed:
            raise CallerForbidden(
                f"caller {caller.name!r} (roles {sorted(caller.roles)}) may not call {rpc}; "
                f"it needs one of {sorted(allowed)}"
            )
