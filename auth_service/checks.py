"""`garmin-auth-service check-config`: everything the service needs, checked before it starts.

Each check reads only what it needs from the environment, so one broken setting does not hide
the state of the others; one line per check, `ok` or `FAIL`, then the exit status says whether
anything failed. Lines carry file names, key ids, counts, certificate subjects and redacted
URLs: never a key, token, password or secret.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, LargeBinary, false, func, not_, or_, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from auth_service.api.callers import CallersFileError
from auth_service.checks_exposure import CheckFailed, exposure_checks
from auth_service.config import (
    PREFIX,
    load_database_url,
    load_keyring,
    load_migration_locking,
    load_settings,
    redacted_database_url,
)
from auth_service.crypto import (
    MAX_HEADER_BYTES,
    DecryptionError,
    Keyring,
    blob_header,
    sealed_key_id,
)
from auth_service.serving_config import with_secret_files, without_secret_files
from auth_service.storage.database import (
    SQLITE_BEGIN_OPTION,
    create_engine_for,
    describe_database_error,
)
from auth_service.storage.key_rotation import (
    KeySample,
    sample_stored_challenges,
    sample_stored_sessions,
)
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.schema import SchemaState, head_revision, schema_state
from garmin_client.env import ConfigError
from garmin_client.logging_setup import redact

PROBE_AAD = b"garmin-auth check-config probe"
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})

# Opens a few blobs of one column stored under a key id (see key_rotation.KeySample).
SampleKey = Callable[[Engine, Keyring, str], KeySample]
# Users named on the line when blobs have no header: one line per check stays readable.
_NAMED_DAMAGED_ROWS = 10
# Rows fetched at a time when reading the headers of blobs under no configured key id.
_FOREIGN_BATCH = 1000


@dataclass(frozen=True)
class _StoredColumn:
    """An encrypted column: whose rows it is in, its blobs, and how to sample them."""

    user_id: InstrumentedAttribute[str]
    blob: InstrumentedAttribute[bytes | None] | InstrumentedAttribute[bytes]
    sample_key: SampleKey


@dataclass
class _ForeignBlobs:
    """The blobs of a column under no configured key id. Key ids, counts and user ids: never
    a secret."""

    # Sealed under a key id that is not configured: its key is still needed.
    under_unknown_key_ids: Counter[str] = field(default_factory=Counter)
    # No blob header at all: altered rows. The first few users are named.
    damaged: int = 0
    damaged_user_ids: list[str] = field(default_factory=list)

    def add(self, user_id: str, kid: str | None) -> None:
        if kid is not None:
            self.under_unknown_key_ids[kid] += 1
            return
        self.damaged += 1
        if len(self.damaged_user_ids) < _NAMED_DAMAGED_ROWS:
            self.damaged_user_ids.append(user_id)


_SESSIONS = _StoredColumn(
    GarminAuthenticationState.user_id,
    GarminAuthenticationState.session_ciphertext,
    sample_stored_sessions,
)
_CHALLENGES = _StoredColumn(
    GarminMfaChallenge.user_id, GarminMfaChallenge.pending_ciphertext, sample_stored_challenges
)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


class _Checks:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.results: list[CheckResult] = []
        self.engine: Engine | None = None
        self.database_ok = False
        self.at_head = False

    def run(self, name: str, check: Callable[[], str]) -> bool:
        try:
            detail = check()
        except (CheckFailed, ConfigError, CallersFileError) as exc:
            self.results.append(CheckResult(name, False, str(exc)))
            return False
        # A check that crashes is a failed check, reported on its line, not a traceback.
        except Exception as exc:  # noqa: BLE001
            self.results.append(
                CheckResult(name, False, f"unexpected {type(exc).__name__}: {redact(str(exc))}")
            )
            return False
        self.results.append(CheckResult(name, True, detail))
        return True

    def raw(self, name: str) -> str | None:
        value = self.env.get(PREFIX + name, "").strip()
        return value or None

    # --- the checks ---------------------------------------------------------------------

    def settings(self) -> str:
        load_settings(self.env)
        load_migration_locking(self.env)  # read by `migrate` alone
        return "every GARMIN_AUTH_* setting parses"

    def database(self) -> str:
        url = load_database_url(self.env)
        shown = redacted_database_url(url)
        parsed = make_url(url)
        # Connecting would create an empty SQLite file: a typo in the path must not look fine.
        if (
            parsed.get_backend_name() == "sqlite"
            and parsed.database not in (None, "", ":memory:")
            and not Path(str(parsed.database)).exists()
        ):
            raise CheckFailed(f"{shown}: the file does not exist (run migrate to create it)")
        self.engine = create_engine_for(url)
        try:
            with self._reader().connect() as connection:
                connection.execute(text("SELECT 1")).scalar_one()
        except (SQLAlchemyError, OSError) as exc:
            raise CheckFailed(f"{shown} unreachable ({_driver_problem(exc, url)})") from None
        self.database_ok = True
        return f"{shown} reachable"

    def migrations(self) -> str:
        if not self.database_ok:
            raise CheckFailed("not checked: the database is unreachable")
        url = load_database_url(self.env)
        (state, current), head = schema_state(url), head_revision()
        if current is None:
            raise CheckFailed(f"never migrated; head is {head}: run `garmin-auth-service migrate`")
        if state is SchemaState.BEHIND:
            raise CheckFailed(
                f"at revision {current}, head is {head}: run `garmin-auth-service migrate`"
            )
        self.at_head = True
        if state is SchemaState.AHEAD:
            return (
                f"at revision {current}, newer than this release's head {head}; WARNING: an "
                "older release on a newer schema (a rollout or a rollback): served, as "
                "migrations only add"
            )
        return f"at head ({head})"

    def keys(self) -> str:
        keyring = load_keyring(self.env)
        for kid, key in keyring.keys:
            # Each key on its own, since the ring only ever encrypts with the first.
            single = Keyring(((kid, key),))
            probe = os.urandom(32)
            try:
                if single.decrypt(single.encrypt(probe, PROBE_AAD), PROBE_AAD) != probe:
                    raise CheckFailed(f"key {kid!r} does not decrypt what it encrypted")
            except DecryptionError:
                raise CheckFailed(f"key {kid!r} does not decrypt what it encrypted") from None
        kids = ", ".join(kid for kid, _ in keyring.keys)
        return (
            f"{len(keyring.keys)} key(s) ({kids}), primary {keyring.primary_kid}; "
            "each encrypts and decrypts a probe"
        )

    def stored_secrets(self) -> str:
        if not self.at_head:
            raise CheckFailed("not checked: the database is unreachable or not migrated")
        keyring = load_keyring(self.env)
        sessions = self._blobs(keyring, "session", _SESSIONS)
        challenges = self._blobs(keyring, "MFA challenge", _CHALLENGES)
        return f"sessions: {sessions}; MFA challenges: {challenges}"

    def _blobs(self, keyring: Keyring, what: str, column: _StoredColumn) -> str:
        """Counts of the column's blobs by key id, with a few blobs per key id decrypted. A
        key id fails only when none of its samples opens (a wrong key under that id), and a
        blob sealed under a key id that is not configured fails (its key is still needed). A
        sample that does not open among ones that do, or a blob with no header at all, is an
        altered row, named on the line without failing it: that user answers DATA_LOSS until
        logged in again, every other user is served."""
        counts = self._count_by_key_id(keyring, column.blob)
        unreadable: list[str] = []
        for kid in counts:
            sample = column.sample_key(self._reader(), keyring, kid)
            # (Nothing sampled: the rows went between the count and the sample.)
            if sample.sampled and not sample.opened:
                raise CheckFailed(_wrong_key(what, sample))
            unreadable.extend(sample.unreadable_user_ids)
        foreign = self._foreign_blobs(keyring, column)
        shown = ", ".join(f"{kid}={number}" for kid, number in counts.items())
        if foreign.under_unknown_key_ids:
            raise CheckFailed(_unknown_key_ids(what, foreign, shown))
        if not counts and not foreign.damaged:
            return "none stored"
        readable = f"{shown} (each key id opened a sample)" if counts else "none under a key id"
        return f"{readable}{_altered_rows(what, unreadable)}{_damaged_rows(what, foreign)}"

    def _count_by_key_id(
        self,
        keyring: Keyring,
        blob: InstrumentedAttribute[bytes | None] | InstrumentedAttribute[bytes],
    ) -> dict[str, int]:
        """How many blobs are stored under each configured key id that has any, by their
        header compared in SQL (no blob leaves the database)."""
        counts: dict[str, int] = {}
        with self._reader().connect() as connection:
            for kid, _ in keyring.keys:
                number = connection.execute(
                    select(func.count()).where(_under_key_id(blob, kid))
                ).scalar_one()
                if number:
                    counts[kid] = number
        return counts

    def _foreign_blobs(self, keyring: Keyring, column: _StoredColumn) -> _ForeignBlobs:
        """The blobs under no configured key id, told apart by their header: one sealed under
        another key id needs that key back, while one with no header (a damaged or replaced
        row) was never sealed under any key. Only a header's bytes leave the database: at
        most MAX_HEADER_BYTES of each blob, and only of these rows (none, normally)."""
        blob = column.blob
        configured = or_(*(_under_key_id(blob, kid) for kid, _ in keyring.keys))
        head = func.substr(blob, 1, MAX_HEADER_BYTES, type_=LargeBinary)
        statement = select(column.user_id, head, func.length(blob)).where(
            # SQLite's substr of an empty blob is NULL, and so would the comparison be.
            blob.is_not(None),
            not_(func.coalesce(configured, false())),
        )
        foreign = _ForeignBlobs()
        with self._reader().connect() as connection:
            # Streamed: with a key missing, every stored row may be one of these.
            rows = connection.execution_options(yield_per=_FOREIGN_BATCH).execute(statement)
            for user_id, header, length in rows:
                foreign.add(user_id, sealed_key_id(bytes(header or b""), length))
        return foreign

    # --- helpers ------------------------------------------------------------------------

    def _reader(self) -> Engine:
        assert self.engine is not None
        # A read needs no SQLite write lock.
        return self.engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


def _under_key_id(
    blob: InstrumentedAttribute[bytes | None] | InstrumentedAttribute[bytes], kid: str
) -> ColumnElement[bool]:
    """Whether a blob is under `kid`, compared in SQL. From its second byte on, the header is
    the same for every blob format."""
    header = blob_header(kid)[1:]
    return func.substr(blob, 2, len(header), type_=LargeBinary) == header


def _unknown_key_ids(what: str, foreign: _ForeignBlobs, shown: str) -> str:
    unknown = foreign.under_unknown_key_ids
    ids = ", ".join(f"{kid!r}={number}" for kid, number in unknown.items())
    return (
        f"{sum(unknown.values())} {what}(s) under a key id not in GARMIN_AUTH_ENCRYPTION_KEYS "
        f"({ids}; found {shown or 'none'} under configured ids); put the old key back"
    )


def _wrong_key(what: str, sample: KeySample) -> str:
    others = f", nor any other of the {sample.sampled} sampled" if sample.sampled > 1 else ""
    return (
        f"the {what} of user {sample.unreadable_user_ids[0]!r} is under key id {sample.kid!r} "
        f"but that key does not decrypt it{others} (a different key under the same id?)"
    )


def _altered_rows(what: str, user_ids: list[str]) -> str:
    """A warning naming the users whose sampled secret did not open, under a key that opened
    others: their rows were altered, and only they are affected."""
    if not user_ids:
        return ""
    return (
        f"; WARNING: {len(user_ids)} sampled {what}(s) do not open (altered in the database?): "
        f"user(s) {', '.join(map(repr, user_ids))} answer DATA_LOSS SECRET_UNREADABLE until "
        "logged in again"
    )


def _damaged_rows(what: str, foreign: _ForeignBlobs) -> str:
    """A warning naming the users whose stored blob has no header at all: altered rows that
    no key, configured or retired, could open; only they are affected."""
    if not foreign.damaged:
        return ""
    named = ", ".join(map(repr, foreign.damaged_user_ids))
    unnamed = foreign.damaged - len(foreign.damaged_user_ids)
    more = f" and {unnamed} more" if unnamed else ""
    return (
        f"; WARNING: {foreign.damaged} {what}(s) not sealed blobs at all (altered in the "
        f"database?): user(s) {named}{more} answer DATA_LOSS SECRET_UNREADABLE until logged in "
        "again"
    )


def _driver_problem(exc: BaseException, url: str) -> str:
    return describe_database_error(exc, url)


def run_checks(env: Mapping[str, str] | None = None) -> list[CheckResult]:
    """Every check, in order; see the module docstring."""
    raw_env = os.environ if env is None else env
    try:
        resolved = with_secret_files(raw_env)
    except ConfigError as exc:
        # Reported on its own line; the other checks read what they can without the files.
        failed = CheckResult("secret files", False, str(exc))
        return [failed, *run_checks(without_secret_files(raw_env))]
    checks = _Checks(resolved)
    try:
        checks.run("settings", checks.settings)
        checks.run("database", checks.database)
        checks.run("migrations", checks.migrations)
        checks.run("encryption keys", checks.keys)
        checks.run("stored secrets", checks.stored_secrets)
        for name, check in exposure_checks(checks.env):
            checks.run(name, check)
    finally:
        checks.close()
    return checks.results
