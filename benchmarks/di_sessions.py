"""DI sessions for the benchmarks: accounts for the emulator, token pairs it issues in bulk
(`POST /__emulator/di-tokens`, python-garminconnect's garmin_tokens.json shape), and a COPY
of them into the service's table as ACTIVE DI sessions, each sealed with the service's own
SecretBox under the key the service is given, parsed by the service's own import parser.

COPY rather than ImportSession: an import refreshes the pair at once (the service must learn
its expiry), so 10,000 imports would be a refresh storm of their own before the measured one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import requests

from auth_service.crypto import Keyring
from auth_service.domain.models import GarminTokens, SessionKind, SessionState
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from benchmarks.harness import SEED_COLUMNS, TABLE, PostgresDatabase, user_id
from garmin_emulator import DI_TOKENS_PATH

# Pairs asked for per control request (each answer is ~0.7 kB per pair).
ISSUE_CHUNK = 2_000
HTTP_TIMEOUT_SECONDS = 120.0
PASSWORD = "bench-password"  # noqa: S105 - the emulator's benchmark accounts
DI_COLUMNS = (*SEED_COLUMNS, "session_kind", "refresh_token_expires_at")


def email_of(index: int) -> str:
    return f"{user_id(index)}@bench.example"


def write_accounts(path: Path, count: int) -> Path:
    """The emulator's --users-from-file: one EMAIL:PASSWORD per line."""
    path.write_text("".join(f"{email_of(i)}:{PASSWORD}\n" for i in range(count)), encoding="utf-8")
    return path


def issue_pairs(emulator_url: str, count: int) -> list[dict[str, str]]:
    """A fresh DI pair per account (index order), issued by the emulator (not counted as
    requests or refreshes)."""
    files: list[dict[str, str]] = []
    with requests.Session() as http:
        for start in range(0, count, ISSUE_CHUNK):
            emails = [email_of(i) for i in range(start, min(start + ISSUE_CHUNK, count))]
            answer = http.post(
                emulator_url + DI_TOKENS_PATH,
                json={"emails": emails},
                timeout=HTTP_TIMEOUT_SECONDS,
            )
            answer.raise_for_status()
            files.extend(answer.json()["tokens"])
    return files


def seed_di_sessions(
    database: PostgresDatabase,
    keyring: Keyring,
    files: Sequence[dict[str, str]],
    *,
    refresh_expiry: Callable[[int], datetime | None],
    last_synced_at: Callable[[int], datetime | None],
    lifetime_seconds: int,
    now: datetime | None = None,
) -> int:
    """COPY one ACTIVE DI session per token file (user i gets files[i]); returns how many.

    `refresh_expiry(i)` is when the service believes user i's refresh token dies (None:
    unknown, as right after an import); a known expiry comes with the lifetime Garmin last
    stated (`lifetime_seconds`), as after a ticket exchange. The access token's expiry is its
    JWT's.
    """
    box = SecretBox(keyring)
    now = now or datetime.now(UTC)
    columns = ", ".join(DI_COLUMNS)
    with (
        psycopg.connect(database.conninfo) as connection,
        connection.cursor() as cursor,
        cursor.copy(f"COPY {TABLE} ({columns}) FROM STDIN".encode()) as copy,
    ):
        for index, file in enumerate(files):
            uid = user_id(index)
            tokens = _believed(
                tokens_from_garminconnect(json.dumps(file)), refresh_expiry(index), lifetime_seconds
            )
            synced = last_synced_at(index)
            copy.write_row(_row(uid, box.seal_tokens(uid, 1, tokens), tokens, synced, now))
    return len(files)


def _believed(
    tokens: GarminTokens, refresh_expires_at: datetime | None, lifetime_seconds: int
) -> GarminTokens:
    """The parsed file as the service would hold it with that refresh expiry."""
    if refresh_expires_at is None:
        return tokens
    oauth2 = dataclasses.replace(tokens.oauth2, refresh_token_expires_at=refresh_expires_at)
    return dataclasses.replace(
        tokens, oauth2=oauth2, refresh_token_lifetime_seconds=lifetime_seconds
    )


def _row(
    uid: str, blob: bytes, tokens: GarminTokens, synced: datetime | None, now: datetime
) -> tuple[Any, ...]:
    # In DI_COLUMNS order; an imported session has never been validated.
    return (
        uid,
        SessionState.ACTIVE.value,
        blob,
        1,
        tokens.oauth2.expires_at,
        0,
        None,
        synced,
        synced,
        synced,
        now - timedelta(days=1),
        now,
        SessionKind.DI_OAUTH2.value,
        tokens.oauth2.refresh_token_expires_at,
    )
