"""`garmin-auth-service check-config`: everything the service needs, checked before it starts.

Each check reads only what it needs from the environment, so one broken setting does not hide
the state of the others; one line per check, `ok` or `FAIL`, then the exit status says whether
anything failed. Lines carry file names, key ids, counts, certificate subjects and redacted
URLs: never a key, token, password or secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, LargeBinary, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute

from auth_service.api.callers import CallersFileError
from auth_service.checks_exposure import CheckFailed, exposure_checks, without_files
from auth_service.config import (
    PREFIX,
    load_database_url,
    load_keyring,
    load_migration_locking,
    load_settings,
    redacted_database_url,
)
from auth_service.crypto import DecryptionError, Keyring, blob_header
from auth_service.serving_config import with_secret_files
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
        sessions = self._blobs(
            keyring, "session", GarminAuthenticationState.session_ciphertext, sample_stored_sessions
        )
        challenges = self._blobs(
            keyring,
            "MFA challenge",
            GarminMfaChallenge.pending_ciphertext,
            sample_stored_challenges,
        )
        return f"sessions: {sessions}; MFA challenges: {challenges}"

    def _blobs(
        self,
        keyring: Keyring,
        what: str,
        blob: InstrumentedAttribute[bytes | None] | InstrumentedAttribute[bytes],
        sample_key: SampleKey,
    ) -> str:
        """Counts of `blob` by key id, with a few blobs per key id decrypted. A key id fails
        only when none of its samples opens (a wrong key under that id); a sample that does
        not open among ones that do is an altered row, named on the line without failing it:
        that user answers DATA_LOSS until logged in again, every other user is served."""
        total, counts = self._count_by_key_id(keyring, blob)
        unreadable: list[str] = []
        for kid in counts:
            sample = sample_key(self._reader(), keyring, kid)
            # (Nothing sampled: the rows went between the count and the sample.)
            if sample.sampled and not sample.opened:
                raise CheckFailed(_wrong_key(what, sample))
            unreadable.extend(sample.unreadable_user_ids)
        shown = ", ".join(f"{kid}={number}" for kid, number in counts.items())
        if total > sum(counts.values()):
            raise CheckFailed(
                f"{total - sum(counts.values())} {what}(s) under a key id not in "
                f"GARMIN_AUTH_ENCRYPTION_KEYS (found {shown or 'none'} under configured ids); "
                "put the old key back"
            )
        if total == 0:
            return "none stored"
        return f"{shown} (each key id opened a sample){_altered_rows(what, unreadable)}"

    def _count_by_key_id(
        self,
        keyring: Keyring,
        blob: InstrumentedAttribute[bytes | None] | InstrumentedAttribute[bytes],
    ) -> tuple[int, dict[str, int]]:
        """How many blobs are stored, and how many under each configured key id that has
        any, by their header compared in SQL (no blob leaves the database). The total is
        counted first, so a secret stored meanwhile cannot look like one under an unknown id."""
        counts: dict[str, int] = {}
        with self._reader().connect() as connection:
            total = connection.execute(select(func.count()).where(blob.is_not(None))).scalar_one()
            for kid, _ in keyring.keys:
                # From its second byte on, the header is the same for every blob format.
                header = blob_header(kid)[1:]
                under_kid = func.substr(blob, 2, len(header), type_=LargeBinary) == header
                number = connection.execute(select(func.count()).where(under_kid)).scalar_one()
                if number:
                    counts[kid] = number
        return total, counts

    # --- helpers ------------------------------------------------------------------------

    def _reader(self) -> Engine:
        assert self.engine is not None
        # A read needs no SQLite write lock.
        return self.engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


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


def _driver_problem(exc: BaseException, url: str) -> str:
    return describe_database_error(exc, url)


def run_checks(env: Mapping[str, str] | None = None) -> list[CheckResult]:
    """Every check, in order; see the module docstring."""
    raw_env = os.environ if env is None else env
    try:
        resolved = with_secret_files(raw_env)
    except ConfigError as exc:
        # Reported on its own line; the other checks read what they can without the files.
        return [CheckResult("secret files", False, str(exc)), *run_checks(without_files(raw_env))]
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
