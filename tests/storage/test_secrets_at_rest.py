"""No token is readable in a database dump: sessions written through SecretBox are sealed."""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.models import (
    GarminTokens,
    OAuth1Token,
    OAuth2Token,
    PendingMfa,
    SessionState,
)
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.secrets import SecretBox
from tests.fixtures.database import pg_dump

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _write_secrets(
    factory: sessionmaker[Session], keyring: Keyring
) -> tuple[list[str], list[bytes]]:
    """Store three users' sessions and one pending MFA; returns (secret strings, blobs)."""
    box = SecretBox(keyring)
    secret_values: list[str] = []
    blobs: list[bytes] = []
    with factory.begin() as session:
        for user_id in ("alice", "bob", "carol"):
            values = {name: f"{name}-{secrets.token_hex(12)}" for name in ("o1", "s1", "at", "rt")}
            secret_values += values.values()
            tokens = GarminTokens(
                oauth1=OAuth1Token(oauth_token=values["o1"], oauth_token_secret=values["s1"]),
                oauth2=OAuth2Token(
                    scope="CONNECT_READ",
                    jti="jti",
                    token_type="Bearer",
                    access_token=values["at"],
                    refresh_token=values["rt"],
                    expires_at=T0 + timedelta(hours=1),
                    refresh_token_expires_at=T0 + timedelta(days=30),
                ),
            )
            blob = box.seal_tokens(user_id, 0, tokens)
            blobs.append(blob)
            session.add(
                GarminAuthenticationState(
                    user_id=user_id,
                    state=SessionState.ACTIVE,
                    session_ciphertext=blob,
                    created_at=T0,
                    updated_at=T0,
                )
            )
        session.flush()
        cookie = f"cookie-{secrets.token_hex(12)}"
        secret_values.append(cookie)
        challenge_id = hashlib.sha256(b"challenge").hexdigest()
        pending = PendingMfa(
            cookies=[{"name": "SESSION", "value": cookie}],
            login_params={"service": "https://connect.garmin.com"},
            mfa_method="email",
            domain="garmin.com",
        )
        blob = box.seal_pending(challenge_id, "alice", pending)
        blobs.append(blob)
        session.add(
            GarminMfaChallenge(
                challenge_id_sha256=challenge_id,
                user_id="alice",
                pending_ciphertext=blob,
                mfa_method="email",
                expires_at=T0,
                created_at=T0,
            )
        )
    return secret_values, blobs


def _encodings(value: str) -> list[bytes]:
    """The forms a leaked secret could take in a dump: raw, hex (bytea), base64."""
    raw = value.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw)[:-4]]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_file_holds_no_token_in_clear(
    engine: Engine, db_sessionmaker: sessionmaker[Session], keyring: Keyring
) -> None:
    secret_values, blobs = _write_secrets(db_sessionmaker, keyring)
    engine.dispose()  # close connections so the bytes on disk are final
    path = Path(str(engine.url.database))
    files = [path, Path(f"{path}-wal"), Path(f"{path}-journal")]
    content = b"".join(file.read_bytes() for file in files if file.exists())

    assert b"alice" in content  # control: the rows are in the file
    assert all(blob in content for blob in blobs)  # and stored as is
    for value in secret_values:
        for encoded in _encodings(value):
            assert encoded not in content, "a secret is readable in the SQLite file"


def test_postgres_dump_holds_no_token_in_clear(pg_database_url: str, keyring: Keyring) -> None:
    engine = create_engine_for(pg_database_url)
    try:
        secret_values, blobs = _write_secrets(session_factory(engine), keyring)
    finally:
        engine.dispose()
    dump = pg_dump(pg_database_url).encode()

    assert b"alice" in dump  # control: the rows are in the dump
    # bytea is dumped as hex: a plaintext blob would show up as the hex of its secrets.
    assert all(blob.hex().encode() in dump for blob in blobs)
    for value in secret_values:
        for encoded in _encodings(value):
            assert encoded not in dump, "a secret is readable in pg_dump's output"
