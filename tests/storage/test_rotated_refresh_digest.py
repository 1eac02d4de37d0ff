"""garmin_authentication_state.rotated_refresh_sha256 (migration 0012): digests of the DI
refresh tokens the latest rotations replaced (up to 4, newest first, each the first 16 hex
digits of its SHA-256), written by the statement that stores the rotated
pair (the service's refresh, a holder's ReportRefreshed), cleared by every other change of
the stored tokens (sign-in, import, invalidation, disconnect). ImportSession reads it to tell
a client's retry from new credentials (tests/refresh/test_import_retry_keeps_the_account.py).
Through the repositories, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import GarminTokens, OAuth1Token, OAuth2Token
from auth_service.domain.views import SessionRow, refresh_token_digest, rotated_away
from auth_service.services.unit_of_work import UnitOfWork, UnitsOfWork
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from tests.leases import read_row

USER = "digest-user"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
def uow(db_sessionmaker: sessionmaker[Session], keyring: Keyring) -> UnitsOfWork:
    return UnitsOfWork(SqlStore(db_sessionmaker, SecretBox(keyring)), FakeClock(NOW))


def _di(refresh_token: str) -> GarminTokens:
    return GarminTokens(oauth1=None, oauth2=_oauth2(refresh_token), di_client_id="client-id")


def _garth(refresh_token: str) -> GarminTokens:
    oauth1 = OAuth1Token(oauth_token="oauth1-token", oauth_token_secret="oauth1-secret")
    return GarminTokens(oauth1=oauth1, oauth2=_oauth2(refresh_token))


def _oauth2(refresh_token: str) -> OAuth2Token:
    return OAuth2Token(
        scope="CONNECT_READ",
        jti="jti",
        token_type="Bearer",
        access_token=f"access-for-{refresh_token}",
        refresh_token=refresh_token,
        expires_at=NOW + timedelta(hours=1),
        refresh_token_expires_at=NOW + timedelta(days=30),
    )


def _install(uow: UnitsOfWork, tokens: GarminTokens) -> SessionRow:
    with uow() as unit:
        locked = unit.sessions.lock_or_create(USER, unit.now)
        return unit.sessions.install_tokens(locked, tokens, unit.now, validated=False)


def _rotate(uow: UnitsOfWork, tokens: GarminTokens) -> SessionRow:
    """What the refresher's commit does with the pair Garmin answered."""
    with uow() as unit:
        locked = unit.sessions.lock(USER)
        assert locked is not None
        row = unit.refreshes.store_rotated(
            USER,
            version=locked.session_version,
            tokens=tokens,
            now=unit.now,
            keepalive_not_before=None,
            replaced=locked,
        )
        assert row is not None
        return row


def _version(unit: UnitOfWork) -> int:
    locked = unit.sessions.lock(USER)
    assert locked is not None
    return locked.session_version


def test_a_rotation_records_the_digest_of_the_refresh_token_it_replaced(
    uow: UnitsOfWork, db_sessionmaker: sessionmaker[Session]
) -> None:
    assert _install(uow, _di("refresh-1")).rotated_refresh_sha256 is None

    rotated = _rotate(uow, _di("refresh-2"))

    expected = hashlib.sha256(b"refresh-1").hexdigest()[:16]
    assert rotated.rotated_refresh_sha256 == expected == refresh_token_digest("refresh-1")
    assert read_row(db_sessionmaker, USER).rotated_refresh_sha256 == expected
    assert rotated_away(rotated, "refresh-1")
    assert not rotated_away(rotated, "refresh-2")
    # Newest first; the session's first token and the last three rotations' are kept.
    assert _rotate(uow, _di("refresh-3")).rotated_refresh_sha256 == refresh_token_digest(
        "refresh-2"
    ) + refresh_token_digest("refresh-1")
    for n in range(4, 8):
        latest = _rotate(uow, _di(f"refresh-{n}"))
    assert [rotated_away(latest, f"refresh-{n}") for n in range(1, 8)] == [
        True,
        False,
        False,
        True,
        True,
        True,
        False,
    ]
    assert latest.rotated_refresh_sha256 == "".join(
        refresh_token_digest(f"refresh-{n}") for n in (6, 5, 4, 1)
    )


def test_a_validation_without_new_tokens_keeps_the_digest(uow: UnitsOfWork) -> None:
    _install(uow, _di("refresh-1"))
    _rotate(uow, _di("refresh-2"))
    with uow() as unit:
        validated = unit.sessions.store_validation(USER, version=_version(unit), now=unit.now)
    assert validated is not None
    assert validated.rotated_refresh_sha256 == refresh_token_digest("refresh-1")


def test_new_credentials_clear_the_digest(uow: UnitsOfWork) -> None:
    _install(uow, _di("refresh-1"))
    _rotate(uow, _di("refresh-2"))

    assert _install(uow, _di("other-refresh-1")).rotated_refresh_sha256 is None


def test_an_invalidation_clears_the_digest(uow: UnitsOfWork) -> None:
    _install(uow, _di("refresh-1"))
    _rotate(uow, _di("refresh-2"))
    with uow() as unit:
        ended = unit.sessions.invalidate(
            USER, version=_version(unit), reason="test: rejected", now=unit.now
        )
    assert ended is not None
    assert ended.rotated_refresh_sha256 is None


def test_a_disconnect_clears_the_digest(uow: UnitsOfWork) -> None:
    _install(uow, _di("refresh-1"))
    _rotate(uow, _di("refresh-2"))
    with uow() as unit:
        disconnected = unit.sessions.disconnect(USER, unit.now)
    assert disconnected is not None
    assert disconnected.rotated_refresh_sha256 is None


def test_a_garth_refresh_records_no_digest(uow: UnitsOfWork) -> None:
    """Garth's exchange rotates nothing: no refresh token dies with it."""
    _install(uow, _garth("garth-refresh-1"))

    assert _rotate(uow, _garth("garth-refresh-2")).rotated_refresh_sha256 is None


def test_a_holders_reported_refresh_records_the_digest(uow: UnitsOfWork) -> None:
    _install(uow, _di("refresh-1"))
    digest = lease_digest("lease-id-of-the-holder")
    with uow() as unit:
        granted = unit.leases.grant(
            USER,
            lease_digest=digest,
            holder="worker-1",
            caller="system",
            now=unit.now,
            expires_at=unit.now + timedelta(minutes=5),
        )
        assert granted is not None
    with uow() as unit:
        locked = unit.sessions.lock(USER)
        assert locked is not None
        reported = unit.leases.store_refreshed(
            digest, locked=locked, tokens=_di("refresh-2"), now=unit.now
        )

    assert reported is not None
    assert reported.rotated_refresh_sha256 == refresh_token_digest("refresh-1")
