"""Encryption-key rotation: re-encrypt every stored blob under the keyring's primary key,
online, without overwriting a concurrent writer's newer blob. Session blobs written before
they bound the session version (format 1) are rewritten in format 2 even when their key is
already the primary one (issue 14)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, LargeBinary, Select, func, literal, select, true, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from auth_service.crypto import (
    BLOB_VERSION,
    VERSION_BOUND_BLOB,
    DecryptionError,
    Keyring,
    blob_header,
    challenge_aad,
    session_aad,
    stored_session_aad,
)
from auth_service.storage.database import SQLITE_BEGIN_OPTION
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge

log = logging.getLogger(__name__)

# How often rotate_keys retries a row that a concurrent writer keeps changing.
ROTATION_ATTEMPTS_PER_ROW = 3
# Blobs already under the primary key id that rotate_keys tries to open before writing.
PRIMARY_KEY_SAMPLES = 3


class PrimaryKeyMismatch(Exception):
    """Blobs stored under the primary key id that the keyring's primary key opens none of: the
    job holds other bytes under that id than the replicas that wrote them (re-generated or
    mistyped). Rotating would seal every old-key secret with a key no replica has. The message
    names the key id, counts and one user id: never a key."""


@dataclass(frozen=True)
class RotationReport:
    """What rotate_keys did. Holds counts, key ids and user ids: never a secret."""

    primary_kid: str
    # Whether a blob already stored under the primary key id was opened with it before any
    # write (False: none was stored yet, so nothing could confirm the key).
    primary_checked: bool
    sessions_rotated: int
    challenges_rotated: int
    # Rows a concurrent writer changed between our read and our write; never overwritten.
    conflicts: int
    # Blobs that no key in the ring opens (unknown key id, tampering, wrong row): left alone.
    undecryptable_session_user_ids: tuple[str, ...]
    undecryptable_challenge_user_ids: tuple[str, ...]
    # Rows still under an old key because they changed on every attempt: run again.
    unfinished_user_ids: tuple[str, ...]

    @property
    def rotated(self) -> int:
        return self.sessions_rotated + self.challenges_rotated

    @property
    def undecryptable(self) -> int:
        return len(self.undecryptable_session_user_ids) + len(self.undecryptable_challenge_user_ids)

    @property
    def complete(self) -> bool:
        """True when every blob in the database is now under the primary key."""
        return self.undecryptable == 0 and not self.unfinished_user_ids


@dataclass(frozen=True)
class _StaleBlob:
    row_key: str
    user_id: str
    blob: bytes
    # The row's session version (sessions); 0 for columns that bind none.
    version: int


@dataclass(frozen=True)
class _BlobColumn:
    """An encrypted column, its row key, the format it is written in and how the associated
    data of a stored blob (opening) and of its rewrite (sealing) are built."""

    row_key: InstrumentedAttribute[str]
    user_id: InstrumentedAttribute[str]
    blob: InstrumentedAttribute[Any]
    version: InstrumentedAttribute[int] | None
    blob_format: int
    opening_aad: Callable[[_StaleBlob], bytes]
    sealing_aad: Callable[[_StaleBlob], bytes]


_SESSIONS = _BlobColumn(
    row_key=GarminAuthenticationState.user_id,
    user_id=GarminAuthenticationState.user_id,
    blob=GarminAuthenticationState.session_ciphertext,
    version=GarminAuthenticationState.session_version,
    blob_format=VERSION_BOUND_BLOB,
    opening_aad=lambda row: stored_session_aad(row.user_id, row.version, row.blob),
    sealing_aad=lambda row: session_aad(row.user_id, row.version),
)
_CHALLENGES = _BlobColumn(
    row_key=GarminMfaChallenge.challenge_id_sha256,
    user_id=GarminMfaChallenge.user_id,
    blob=GarminMfaChallenge.pending_ciphertext,
    version=None,
    blob_format=BLOB_VERSION,
    opening_aad=lambda row: challenge_aad(row.row_key, row.user_id),
    sealing_aad=lambda row: challenge_aad(row.row_key, row.user_id),
)


@dataclass
class _Tally:
    rotated: int = 0
    conflicts: int = 0
    undecryptable: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)


def rotate_keys(engine: Engine, keyring: Keyring, batch_size: int = 500) -> RotationReport:
    """Re-encrypt every stored blob that is not under the keyring's primary key, online.

    Rows are read in batches of `batch_size` (keyset pagination, short transactions) and each
    is written back with a conditional UPDATE that only matches if the row still holds the
    blob we read, so a concurrent writer's newer blob is never overwritten: such a row is
    re-read and retried. Blobs written under an old key after the scan passed them (a replica
    still running with the old primary) are not seen: stop those first, and run again until
    `rotated` is 0 before removing an old key.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    primary_checked = check_primary_key(engine, keyring)
    sessions = _ColumnRotation(engine, keyring, _SESSIONS).run(batch_size)
    challenges = _ColumnRotation(engine, keyring, _CHALLENGES).run(batch_size)
    report = RotationReport(
        primary_kid=keyring.primary_kid,
        primary_checked=primary_checked,
        sessions_rotated=sessions.rotated,
        challenges_rotated=challenges.rotated,
        conflicts=sessions.conflicts + challenges.conflicts,
        undecryptable_session_user_ids=tuple(sessions.undecryptable),
        undecryptable_challenge_user_ids=tuple(challenges.undecryptable),
        unfinished_user_ids=tuple(sessions.unfinished + challenges.unfinished),
    )
    _log_report(report)
    return report


def check_primary_key(engine: Engine, keyring: Keyring) -> bool:
    """Whether the primary key opens what is already stored under its id: True when a sample
    opened, False when nothing is stored under it yet; PrimaryKeyMismatch when samples are
    stored and none opens (one bad row among good ones does not stop a rotation)."""
    stored, failed_user = 0, None
    for column in (_SESSIONS, _CHALLENGES):
        for sample in _ColumnRotation(engine, keyring, column).primary_samples():
            stored += 1
            try:
                keyring.decrypt(sample.blob, column.opening_aad(sample))
            except DecryptionError:
                failed_user = failed_user or sample.user_id
                continue
            return True
    if stored == 0:
        return False
    raise PrimaryKeyMismatch(
        f"the primary key {keyring.primary_kid!r} opens none of the {stored} stored secret(s) "
        f"sampled under that id (the first: user {failed_user!r}): these bytes are not the key "
        "the replicas use under that id. Nothing was re-encrypted; give this job the "
        "replicas' key"
    )


class _ColumnRotation:
    """Rotation of one encrypted column."""

    def __init__(self, engine: Engine, keyring: Keyring, column: _BlobColumn) -> None:
        self.engine = engine
        self.keyring = keyring
        self.column = column
        self.tally = _Tally()
        # A plain read needs no SQLite write lock.
        self.reader = engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})

    def run(self, batch_size: int) -> _Tally:
        after: str | None = None
        while batch := self._read_stale(self._stale_rows().where(self._after(after)), batch_size):
            for row_key in self._rewrite_batch(batch):
                self.tally.conflicts += 1
                self._retry_row(row_key)
            after = batch[-1].row_key
        return self.tally

    def _stale_rows(self) -> Select[tuple[str, str, Any, int]]:
        column = self.column
        # Comparing the blob header in SQL skips rows already rotated without shipping their
        # blobs to us. The header starts with the format: older formats are stale too.
        header = blob_header(self.keyring.primary_kid, column.blob_format)
        prefix = func.substr(column.blob, 1, len(header), type_=LargeBinary)
        return self._blobs_where(prefix != header)

    def primary_samples(self) -> list[_StaleBlob]:
        """A few blobs already under the primary key id, whatever their format."""
        header = blob_header(self.keyring.primary_kid)[1:]  # the same for every format
        prefix = func.substr(self.column.blob, 2, len(header), type_=LargeBinary)
        return self._read_stale(self._blobs_where(prefix == header), PRIMARY_KEY_SAMPLES)

    def _blobs_where(self, condition: ColumnElement[bool]) -> Select[tuple[str, str, Any, int]]:
        column = self.column
        version = column.version if column.version is not None else literal(0)
        return (
            select(column.row_key, column.user_id, column.blob, version)
            .where(column.blob.is_not(None), condition)
            .order_by(column.row_key)
        )

    def _after(self, row_key: str | None) -> ColumnElement[bool]:
        return true() if row_key is None else self.column.row_key > row_key

    def _read_stale(
        self, statement: Select[tuple[str, str, Any, int]], limit: int
    ) -> list[_StaleBlob]:
        with self.reader.connect() as connection:
            rows = connection.execute(statement.limit(limit)).all()
        return [
            _StaleBlob(row_key=row[0], user_id=row[1], blob=row[2], version=row[3]) for row in rows
        ]

    def _reencrypt(self, row: _StaleBlob) -> bytes:
        plaintext = self.keyring.decrypt(row.blob, self.column.opening_aad(row))
        return self.keyring.encrypt(
            plaintext, self.column.sealing_aad(row), blob_format=self.column.blob_format
        )

    def _rewrite_batch(self, batch: list[_StaleBlob]) -> list[str]:
        """Re-encrypt a batch outside any transaction, then write it in one short transaction.

        Returns the row keys whose blob changed under us.
        """
        rewrites: list[tuple[_StaleBlob, bytes]] = []
        for row in batch:
            try:
                rewrites.append((row, self._reencrypt(row)))
            except DecryptionError:
                self.tally.undecryptable.append(row.user_id)
        conflicted: list[str] = []
        with self.engine.begin() as connection:
            for row, new_blob in rewrites:
                if self._swap_blob(connection, row, new_blob):
                    self.tally.rotated += 1
                else:
                    conflicted.append(row.row_key)
        return conflicted

    def _swap_blob(self, connection: Connection, row: _StaleBlob, new_blob: bytes) -> bool:
        """Replace the blob only if the row still holds the one we read (compare-and-swap)."""
        column = self.column
        statement = update(column.row_key.class_).where(
            column.row_key == row.row_key, column.blob == row.blob
        )
        if column.version is not None:
            # The rewrite is sealed for the version read: the row must still be at it.
            statement = statement.where(column.version == row.version)
        result = connection.execute(statement.values({column.blob: new_blob}))
        return result.rowcount == 1

    def _retry_row(self, row_key: str) -> None:
        last_seen: _StaleBlob | None = None
        for _attempt in range(ROTATION_ATTEMPTS_PER_ROW):
            fresh = self._read_stale(self._stale_rows().where(self.column.row_key == row_key), 1)
            if not fresh:
                return  # the writer left it under the primary key, emptied or deleted it
            row = last_seen = fresh[0]
            try:
                new_blob = self._reencrypt(row)
            except DecryptionError:
                self.tally.undecryptable.append(row.user_id)
                return
            with self.engine.begin() as connection:
                if self._swap_blob(connection, row, new_blob):
                    self.tally.rotated += 1
                    return
        if last_seen is not None:
            self.tally.unfinished.append(last_seen.user_id)


def _log_report(report: RotationReport) -> None:
    log.info(
        "key rotation to %s: %d session(s) and %d MFA challenge(s) re-encrypted, %d conflict(s)",
        report.primary_kid,
        report.sessions_rotated,
        report.challenges_rotated,
        report.conflicts,
    )
    if report.undecryptable:
        log.warning(
            "key rotation: %d blob(s) no key opens, left unchanged (users: sessions %s, "
            "challenges %s)",
            report.undecryptable,
            list(report.undecryptable_session_user_ids),
            list(report.undecryptable_challenge_user_ids),
        )
    if report.unfinished_user_ids:
        log.warning(
            "key rotation: %d row(s) kept changing and are still under an old key (users %s); "
            "run again",
            len(report.unfinished_user_ids),
            list(report.unfinished_user_ids),
        )
