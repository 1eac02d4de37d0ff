"""Encryption-key rotation: re-encrypt every stored blob under the keyring's primary key,
online, without overwriting a concurrent writer's newer blob. Session blobs written before
they bound the session version (format 1) are rewritten in format 2 even when their key is
already the primary one (issue 14)."""

from __future__ import annotations

import hashlib
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

# How often one pass retries a row that a concurrent writer keeps changing.
ROTATION_ATTEMPTS_PER_ROW = 3
# Passes over the rows still not under the primary key after the first scan: a replica still
# on the old primary (one shutting down) may have written behind the scan. Bounded, since such
# a replica can keep writing; what is left after them is reported unfinished.
SWEEP_PASSES = 3
# Blobs stored under one key id that are opened to confirm the key (by rotate_keys before it
# writes, by check-config): one altered row among them does not condemn the key.
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
    # Rows still under an old key after the last pass: written again and again behind the
    # scan (a replica still on the old primary key) or changed on every attempt. Run again
    # once no replica has the old primary key.
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
class KeySample:
    """A few blobs stored under one key id, opened with the ring's key of that id. Counts and
    user ids: never a secret."""

    kid: str
    opened: int
    # Sampled blobs that did not open: altered rows, or (when none opened) a wrong key.
    unreadable_user_ids: tuple[str, ...]

    @property
    def sampled(self) -> int:
        return self.opened + len(self.unreadable_user_ids)


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
    # The SHA-256 of the blob each undecryptable row held, by row key: later passes skip it
    # while the row still holds it (a user is reported once), and try again if a writer
    # replaced it. A digest, not the blob: a missing key can leave millions of them.
    unreadable_blobs: dict[str, bytes] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)


def rotate_keys(engine: Engine, keyring: Keyring, batch_size: int = 500) -> RotationReport:
    """Re-encrypt every stored blob that is not under the keyring's primary key, online.

    Rows are read in batches of `batch_size` (keyset pagination, short transactions) and each
    is written back with a conditional UPDATE that only matches if the row still holds the
    blob we read, so a concurrent writer's newer blob is never overwritten: such a row is
    re-read and retried. A replica still on the old primary key can write a blob under it
    behind the scan, so after both columns the rows still not under the primary key are
    rotated again (up to SWEEP_PASSES passes); any left then are reported unfinished, and the
    report is not complete.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    primary_checked = check_primary_key(engine, keyring)
    rotations = [_ColumnRotation(engine, keyring, column) for column in (_SESSIONS, _CHALLENGES)]
    for rotation in rotations:
        rotation.run(batch_size)
    _sweep_behind_the_scan(rotations, batch_size)
    sessions, challenges = (rotation.tally for rotation in rotations)
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


def _sweep_behind_the_scan(rotations: list[_ColumnRotation], batch_size: int) -> None:
    """Rotate what a writer still on an old primary key stored behind the scan, in passes over
    both columns until one finds nothing (a session can be written while the challenges are
    scanned); what is still not under the primary key after the last pass is unfinished."""
    for _pass in range(SWEEP_PASSES):
        found = [rotation.run(batch_size) for rotation in rotations]
        if not any(found):
            return
    for rotation in rotations:
        rotation.tally.unfinished.extend(rotation.stale_user_ids(batch_size))


def check_primary_key(engine: Engine, keyring: Keyring) -> bool:
    """Whether the primary key opens what is already stored under its id: True when a sample
    opened, False when nothing is stored under it yet; PrimaryKeyMismatch when samples are
    stored and none opens (one bad row among good ones does not stop a rotation)."""
    stored = 0
    unreadable: list[str] = []
    for column in (_SESSIONS, _CHALLENGES):
        sample = _ColumnRotation(engine, keyring, column).sample_key(keyring.primary_kid)
        if sample.opened:
            return True
        stored += sample.sampled
        unreadable.extend(sample.unreadable_user_ids)
    if stored == 0:
        return False
    raise PrimaryKeyMismatch(
        f"the primary key {keyring.primary_kid!r} opens none of the {stored} stored secret(s) "
        f"sampled under that id (the first: user {unreadable[0]!r}): these bytes are not the "
        "key the replicas use under that id. Nothing was re-encrypted; give this job the "
        "replicas' key"
    )


def sample_stored_sessions(engine: Engine, keyring: Keyring, kid: str) -> KeySample:
    """Open up to PRIMARY_KEY_SAMPLES stored sessions under `kid` (check-config)."""
    return _ColumnRotation(engine, keyring, _SESSIONS).sample_key(kid)


def sample_stored_challenges(engine: Engine, keyring: Keyring, kid: str) -> KeySample:
    """Open up to PRIMARY_KEY_SAMPLES stored MFA challenges under `kid` (check-config)."""
    return _ColumnRotation(engine, keyring, _CHALLENGES).sample_key(kid)


class _ColumnRotation:
    """Rotation of one encrypted column."""

    def __init__(self, engine: Engine, keyring: Keyring, column: _BlobColumn) -> None:
        self.engine = engine
        self.keyring = keyring
        self.column = column
        self.tally = _Tally()
        # A plain read needs no SQLite write lock.
        self.reader = engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})

    def run(self, batch_size: int) -> int:
        """One pass over the rows not under the primary key; returns how many it met, not
        counting blobs already found undecryptable."""
        after: str | None = None
        met = 0
        while batch := self._read_stale(self._stale_rows().where(self._after(after)), batch_size):
            after = batch[-1].row_key
            readable = [row for row in batch if not self._known_unreadable(row)]
            met += len(readable)
            for row_key in self._rewrite_batch(readable) if readable else []:
                self.tally.conflicts += 1
                self._retry_row(row_key)
        return met

    def stale_user_ids(self, batch_size: int) -> list[str]:
        """The users whose row is still not under the primary key (undecryptable blobs
        aside), read in batches and written nowhere."""
        user_ids: list[str] = []
        after: str | None = None
        while batch := self._read_stale(self._stale_rows().where(self._after(after)), batch_size):
            after = batch[-1].row_key
            user_ids.extend(row.user_id for row in batch if not self._known_unreadable(row))
        return user_ids

    def _stale_rows(self) -> Select[tuple[str, str, Any, int]]:
        column = self.column
        # Comparing the blob header in SQL skips rows already rotated without shipping their
        # blobs to us. The header starts with the format: older formats are stale too.
        header = blob_header(self.keyring.primary_kid, column.blob_format)
        prefix = func.substr(column.blob, 1, len(header), type_=LargeBinary)
        # SQLite's substr of an empty blob is NULL, and so would the comparison be: an empty
        # blob is stale (no key opens it), as on PostgreSQL.
        return self._blobs_where(func.coalesce(prefix != header, true()))

    def sample_key(self, kid: str) -> KeySample:
        """Open a few blobs stored under `kid`, whatever their format."""
        header = blob_header(kid)[1:]  # the same for every format
        prefix = func.substr(self.column.blob, 2, len(header), type_=LargeBinary)
        opened = 0
        unreadable: list[str] = []
        for row in self._read_stale(self._blobs_where(prefix == header), PRIMARY_KEY_SAMPLES):
            try:
                self.keyring.decrypt(row.blob, self.column.opening_aad(row))
            except DecryptionError:
                unreadable.append(row.user_id)
                continue
            opened += 1
        return KeySample(kid=kid, opened=opened, unreadable_user_ids=tuple(unreadable))

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
                self._note_unreadable(row)
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
        # A row still changing after these attempts is met again by the next pass, and
        # reported unfinished if it is still not under the primary key after the last one.
        for _attempt in range(ROTATION_ATTEMPTS_PER_ROW):
            fresh = self._read_stale(self._stale_rows().where(self.column.row_key == row_key), 1)
            if not fresh:
                return  # the writer left it under the primary key, emptied or deleted it
            row = fresh[0]
            try:
                new_blob = self._reencrypt(row)
            except DecryptionError:
                self._note_unreadable(row)
                return
            with self.engine.begin() as connection:
                if self._swap_blob(connection, row, new_blob):
                    self.tally.rotated += 1
                    return

    def _note_unreadable(self, row: _StaleBlob) -> None:
        if row.row_key not in self.tally.unreadable_blobs:
            self.tally.undecryptable.append(row.user_id)
        self.tally.unreadable_blobs[row.row_key] = hashlib.sha256(row.blob).digest()

    def _known_unreadable(self, row: _StaleBlob) -> bool:
        return self.tally.unreadable_blobs.get(row.row_key) == hashlib.sha256(row.blob).digest()


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
            "key rotation: %d row(s) still under an old key after the scan and %d more "
            "passes, written again behind the scan or changing on every attempt (users %s); "
            "run again once no replica has the old primary key",
            len(report.unfinished_user_ids),
            SWEEP_PASSES,
            list(report.unfinished_user_ids),
        )
