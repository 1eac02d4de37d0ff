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

from sqlalchemy import Engine, LargeBinary, func, literal, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute

from auth_service.api.callers import CallersFileError
from auth_service.checks_exposure import CheckFailed, exposure_checks, without_files
from auth_service.config import (
    PREFIX,
    load_database_url,
    load_keyring,
    load_settings,
    redacted_database_url,
)
from auth_service.crypto import (
    DecryptionError,
    Keyring,
    blob_header,
    challenge_aad,
    stored_session_aad,
)
from auth_service.serving_config import with_secret_files
from auth_service.storage.database import (
    SQLITE_BEGIN_OPTION,
    create_engine_for,
    describe_database_error,
)
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.schema import current_revision, head_revision
from garmin_client.env import ConfigError
from garmin_client.logging_setup import redact

PROBE_AAD = b"garmin-auth check-config probe"
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


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
        current, head = current_revision(url), head_revision()
        if current is None:
            raise CheckFailed(f"never migrated; head is {head}: run `garmin-auth-service migrate`")
        if current != head:
            raise CheckFailed(
                f"at revision {current}, head is {head}: run `garmin-auth-service migrate`"
            )
        self.at_head = True
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
            keyring,
            "session",
            GarminAuthenticationState.session_ciphertext,
            GarminAuthenticationState.user_id,
            lambda row: stored_session_aad(row[1], row[3], row[2]),
            GarminAuthenticationState.user_id,
            version=GarminAuthenticationState.session_version,
        )
        challenges = self._blobs(
            keyring,
            "MFA challenge",
            GarminMfaChallenge.pending_ciphertext,
            GarminMfaChallenge.challenge_id_sha256,
            lambda row: challenge_aad(row[0], row[1]),
            GarminMfaChallenge.user_id,
        )
        return f"sessions: {sessions}; MFA challenges: {challenges}"

    def _blobs(
        self,
        keyring: Keyring,
        what: str,
        blob: InstrumentedAttribute[bytes | None] | InstrumentedAttribute[bytes],
        row_key: InstrumentedAttribute[str],
        aad: Callable[[tuple[str, str, bytes, int]], bytes],
        user_id: InstrumentedAttribute[str],
        version: InstrumentedAttribute[int] | None = None,
    ) -> str:
        """Counts of `blob` by key id, with one blob per key id decrypted (`aad` gets the
        sample's row key, user id, blob and session version)."""
        counts: list[str] = []
        assert self.engine is not None
        with self._reader().connect() as connection:
            total = connection.execute(select(func.count()).where(blob.is_not(None))).scalar_one()
            counted = 0
            for kid, _ in keyring.keys:
                # The blob header, compared in SQL, so only one blob per key id leaves the
                # database.
                # From its second byte on, the header is the same for every blob format.
                header = blob_header(kid)[1:]
                under_kid = func.substr(blob, 2, len(header), type_=LargeBinary) == header
                number = connection.execute(select(func.count()).where(under_kid)).scalar_one()
                if number == 0:
                    continue
                counted += number
                counts.append(f"{kid}={number}")
                sample = connection.execute(
                    select(row_key, user_id, blob, version if version is not None else literal(0))
                    .where(under_kid)
                    .order_by(row_key)
                    .limit(1)
                ).one()
                assert sample[2] is not None  # it matched a header
                try:
                    keyring.decrypt(sample[2], aad((sample[0], sample[1], sample[2], sample[3])))
                except DecryptionError:
                    raise CheckFailed(
                        f"the {what} of user {sample[1]!r} is under key id {kid!r} but that "
                        "key does not decrypt it (a different key under the same id?)"
                    ) from None
        if total > counted:
            raise CheckFailed(
                f"{total - counted} {what}(s) under a key id not in "
                f"GARMIN_AUTH_ENCRYPTION_KEYS (found {', '.join(counts) or 'none'} under "
                "configured ids); put the old key back"
            )
        if total == 0:
            return "none stored"
        return f"{', '.join(counts)} (one per key id decrypted)"

    # --- helpers ------------------------------------------------------------------------

    def _reader(self) -> Engine:
        assert self.engine is not None
        # A read needs no SQLite write lock.
        return self.engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


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
