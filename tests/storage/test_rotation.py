"""Online key rotation (key_rotation.rotate_keys) on both backends."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import BLOB_VERSION, Keyring
from auth_service.domain.models import (
    GarminTokens,
    OAuth1Token,
    OAuth2Token,
    PendingMfa,
    SessionState,
)
from auth_service.storage.key_rotation import PrimaryKeyMismatch, rotate_keys
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.secrets import SecretBox

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _key_entry(keyring: Keyring) -> str:
    return ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in keyring.keys)


@pytest.fixture
def old_keyring() -> Keyring:
    return Keyring.parse(Keyring.generate_key_value("old"))


@pytest.fixture
def new_keyring(old_keyring: Keyring) -> Keyring:
    """The operator's ring during rotation: the new key first, the old one still listed."""
    return Keyring.parse(f"{Keyring.generate_key_value('new')},{_key_entry(old_keyring)}")


@pytest.fixture
def new_only(new_keyring: Keyring) -> Keyring:
    """The ring after the old key is dropped."""
    return Keyring(new_keyring.keys[:1])


def _tokens(user_id: str, generation: int = 1) -> GarminTokens:
    return GarminTokens(
        oauth1=OAuth1Token(
            oauth_token=f"o1-{user_id}-{generation}", oauth_token_secret=f"s1-{user_id}"
        ),
        oauth2=OAuth2Token(
            scope="CONNECT_READ",
            jti=f"jti-{user_id}",
            token_type="Bearer",
            access_token=f"access-{user_id}-{generation}",
            refresh_token=f"refresh-{user_id}-{generation}",
            expires_at=T0 + timedelta(hours=1),
            refresh_token_expires_at=T0 + timedelta(days=30),
        ),
    )


def _pending(user_id: str) -> PendingMfa:
    return PendingMfa(
        cookies=[{"name": "SESSION", "value": f"cookie-{user_id}", "domain": None}],
        login_params={"service": "https://connect.garmin.com"},
        mfa_method="email",
        domain="garmin.com",
    )


def _challenge_id(user_id: str) -> str:
    return hashlib.sha256(f"challenge-{user_id}".encode()).hexdigest()


def _store(
    factory: sessionmaker[Session],
    keyring: Keyring,
    user_id: str,
    *,
    with_session: bool = True,
    with_challenge: bool = False,
) -> None:
    box = SecretBox(keyring)
    with factory.begin() as session:
        session.add(
            GarminAuthenticationState(
                user_id=user_id,
                state=SessionState.ACTIVE if with_session else SessionState.MFA_PENDING,
                session_ciphertext=box.seal_tokens(user_id, 0, _tokens(user_id))
                if with_session
                else None,
                created_at=T0,
                updated_at=T0,
            )
        )
        session.flush()
        if with_challenge:
            challenge_id = _challenge_id(user_id)
            session.add(
                GarminMfaChallenge(
                    challenge_id_sha256=challenge_id,
                    user_id=user_id,
                    pending_ciphertext=box.seal_pending(challenge_id, user_id, _pending(user_id)),
                    mfa_method="email",
                    expires_at=T0,
                    created_at=T0,
                )
            )


def _session_blob(engine: Engine, user_id: str) -> bytes | None:
    with engine.connect() as connection:
        return connection.scalar(
            select(GarminAuthenticationState.session_ciphertext).where(
                GarminAuthenticationState.user_id == user_id
            )
        )


def _set_session_blob(engine: Engine, user_id: str, blob: bytes) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(GarminAuthenticationState)
            .where(GarminAuthenticationState.user_id == user_id)
            .values(session_ciphertext=blob)
        )


def _all_blobs(engine: Engine) -> dict[str, bytes]:
    with engine.connect() as connection:
        sessions = connection.execute(
            select(GarminAuthenticationState.user_id, GarminAuthenticationState.session_ciphertext)
        ).all()
        challenges = connection.execute(
            select(GarminMfaChallenge.user_id, GarminMfaChallenge.pending_ciphertext)
        ).all()
    blobs = {f"session:{user}": blob for user, blob in sessions if blob is not None}
    blobs.update({f"challenge:{user}": blob for user, blob in challenges})
    return blobs


class HookedKeyring(Keyring):
    """A keyring that calls `before_encrypt(associated_data)` first: the window between
    rotate_keys reading a row and writing it back, where a concurrent writer can strike."""

    def __init__(self, base: Keyring, before_encrypt: Callable[[bytes], None]) -> None:
        super().__init__(base.keys)
        object.__setattr__(self, "before_encrypt", before_encrypt)

    def encrypt(
        self, plaintext: bytes, associated_data: bytes, *, blob_format: int = BLOB_VERSION
    ) -> bytes:
        self.before_encrypt(associated_data)  # type: ignore[attr-defined]
        return super().encrypt(plaintext, associated_data, blob_format=blob_format)


USERS = [f"user-{n:02d}" for n in range(7)]


def test_every_blob_ends_under_the_new_primary_and_still_opens(
    engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    old_keyring: Keyring,
    new_keyring: Keyring,
    new_only: Keyring,
) -> None:
    for n, user_id in enumerate(USERS):
        _store(db_sessionmaker, old_keyring, user_id, with_challenge=n % 2 == 0)
    _store(db_sessionmaker, old_keyring, "mfa-only", with_session=False, with_challenge=True)

    # A batch size smaller than the table exercises the keyset pagination.
    report = rotate_keys(engine, new_keyring, batch_size=3)

    assert report.sessions_rotated == len(USERS)
    assert report.challenges_rotated == 5
    assert report.conflicts == 0
    assert report.undecryptable == 0
    assert report.complete
    assert report.primary_kid == "new"
    assert {Keyring.key_id_of(blob) for blob in _all_blobs(engine).values()} == {"new"}
    box = SecretBox(new_only)
    with db_sessionmaker() as session:
        for row in session.scalars(select(GarminAuthenticationState)):
            if row.session_ciphertext is not None:
                opened = box.open_tokens(row.user_id, row.session_version, row.session_ciphertext)
                assert opened.oauth2.access_token == f"access-{row.user_id}-1"
        for challenge in session.scalars(select(GarminMfaChallenge)):
            pending = box.open_pending(
                challenge.challenge_id_sha256, challenge.user_id, challenge.pending_ciphertext
            )
            assert pending.cookies == _pending(challenge.user_id).cookies


def test_a_second_run_has_nothing_to_do_and_current_rows_are_untouched(
    engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    old_keyring: Keyring,
    new_keyring: Keyring,
) -> None:
    _store(db_sessionmaker, old_keyring, "alice", with_challenge=True)
    _store(db_sessionmaker, new_keyring, "bob", with_challenge=True)
    bob_before = _session_blob(engine, "bob")

    first = rotate_keys(engine, new_keyring)
    after_first = _all_blobs(engine)
    second = rotate_keys(engine, new_keyring)

    assert (first.sessions_rotated, first.challenges_rotated) == (1, 1)
    assert _session_blob(engine, "bob") == bob_before
    assert (second.rotated, second.conflicts, second.undecryptable) == (0, 0, 0)
    assert _all_blobs(engine) == after_first


def test_empty_database(engine: Engine, keyring: Keyring) -> None:
    report = rotate_keys(engine, keyring)
    assert (report.rotated, report.conflicts, report.undecryptable) == (0, 0, 0)


def test_concurrent_write_is_never_overwritten(
    engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    old_keyring: Keyring,
    new_keyring: Keyring,
) -> None:
    for user_id in USERS:
        _store(db_sessionmaker, old_keyring, user_id)
    # A replica refreshes user-03's tokens (under the new primary) while rotation holds the
    # old blob in hand.
    fresh_blob = SecretBox(new_keyring).seal_tokens("user-03", 0, _tokens("user-03", generation=2))

    def writer(associated_data: bytes) -> None:
        if (
            associated_data.endswith(b"\x00user-03\x00session_version=0")
            and _session_blob(engine, "user-03") != fresh_blob
        ):
            _set_session_blob(engine, "user-03", fresh_blob)

    report = rotate_keys(engine, HookedKeyring(new_keyring, writer), batch_size=4)

    assert _session_blob(engine, "user-03") == fresh_blob
    assert report.conflicts == 1
    assert report.sessions_rotated == len(USERS) - 1
    assert report.complete


def test_concurrent_write_under_the_old_key_is_retried(
    engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    old_keyring: Keyring,
    new_keyring: Keyring,
    new_only: Keyring,
) -> None:
    # A replica still running with the old primary writes generation 2 during rotation: the
    # row is re-read and its new content rotated, never replaced by our stale copy.
    _store(db_sessionmaker, old_keyring, "alice")
    stale_write = SecretBox(old_keyring).seal_tokens("alice", 0, _tokens("alice", generation=2))
    calls = 0

    def writer(_associated_data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            _set_session_blob(engine, "alice", stale_write)

    report = rotate_keys(engine, HookedKeyring(new_keyring, writer))

    blob = _session_blob(engine, "alice")
    assert blob is not None
    assert Keyring.key_id_of(blob) == "new"
    assert SecretBox(new_only).open_tokens("alice", 0, blob).oauth2.access_token == "access-alice-2"
    assert (report.sessions_rotated, report.conflicts) == (1, 1)
    assert report.complete


def test_a_row_that_keeps_changing_is_reported_unfinished(
    engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    old_keyring: Keyring,
    new_keyring: Keyring,
) -> None:
    _store(db_sessionmaker, old_keyring, "alice")
    box = SecretBox(old_keyring)
    generation = 1

    def writer(_associated_data: bytes) -> None:
        nonlocal generation
        generation += 1
        _set_session_blob(
            engine, "alice", box.seal_tokens("alice", 0, _tokens("alice", generation))
        )

    report = rotate_keys(engine, HookedKeyring(new_keyring, writer))

    assert report.unfinished_user_ids == ("alice",)
    assert not report.complete
    blob = _session_blob(engine, "alice")
    assert blob is not None
    assert box.open_tokens("alice", 0, blob).oauth2.access_token == f"access-alice-{generation}"


def test_undecryptable_blobs_are_reported_and_left_alone(
    engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    old_keyring: Keyring,
    new_keyring: Keyring,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for user_id in ("alice", "bob", "carol", "dave"):
        _store(db_sessionmaker, old_keyring, user_id, with_challenge=True)
    lost_key = Keyring.parse(Keyring.generate_key_value("lost"))
    alice_blob = _session_blob(engine, "alice")
    bob_blob = _session_blob(engine, "bob")
    assert alice_blob is not None
    assert bob_blob is not None
    unknown_key = SecretBox(lost_key).seal_tokens("alice", 0, _tokens("alice"))
    tampered = bob_blob[:-1] + bytes([bob_blob[-1] ^ 1])
    _set_session_blob(engine, "alice", unknown_key)
    _set_session_blob(engine, "bob", tampered)
    _set_session_blob(engine, "carol", alice_blob)  # another row's blob: wrong associated data
    with engine.begin() as connection:
        connection.execute(
            update(GarminMfaChallenge)
            .where(GarminMfaChallenge.user_id == "dave")
            .values(pending_ciphertext=b"\x01\x03old" + b"\x00" * 40)
        )

    with caplog.at_level("INFO", logger="auth_service.storage.key_rotation"):
        report = rotate_keys(engine, new_keyring, batch_size=2)

    assert sorted(report.undecryptable_session_user_ids) == ["alice", "bob", "carol"]
    assert report.undecryptable_challenge_user_ids == ("dave",)
    assert report.undecryptable == 4
    assert not report.complete
    assert (report.sessions_rotated, report.challenges_rotated) == (1, 3)
    assert _session_blob(engine, "alice") == unknown_key
    assert _session_blob(engine, "bob") == tampered
    assert _session_blob(engine, "carol") == alice_blob
    # The report and the log name users, never content.
    for secret in ("access-", "refresh-", "o1-", "cookie-"):
        assert secret not in repr(report)
        assert secret not in caplog.text
    assert "carol" in caplog.text


def test_batch_size_must_be_positive(engine: Engine, keyring: Keyring) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        rotate_keys(engine, keyring, batch_size=0)


def test_a_wrong_primary_key_under_its_id_refuses_before_any_write(
    engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    old_keyring: Keyring,
    new_keyring: Keyring,
) -> None:
    # "ann" is still under the old key; "bob" was already written by a replica that holds the
    # real new key. The job's ring has other bytes under the new key's id.
    _store(db_sessionmaker, old_keyring, "ann", with_challenge=True)
    _store(db_sessionmaker, new_keyring, "bob")
    wrong = Keyring.parse(f"{Keyring.generate_key_value('new')},{_key_entry(old_keyring)}")
    before = _all_blobs(engine)

    with pytest.raises(PrimaryKeyMismatch, match="'new' opens none") as refused:
        rotate_keys(engine, wrong)

    assert _all_blobs(engine) == before
    assert "bob" in str(refused.value)
    for _kid, key in wrong.keys:
        assert base64.b64encode(key).decode() not in str(refused.value)


def test_the_primary_key_is_confirmed_by_a_stored_secret_or_said_unchecked(
    engine: Engine,
    db_sessionmaker: sessionmaker[Session],
    old_keyring: Keyring,
    new_keyring: Keyring,
) -> None:
    _store(db_sessionmaker, old_keyring, "ann")
    _store(db_sessionmaker, old_keyring, "cid")
    assert rotate_keys(engine, new_keyring).primary_checked is False  # nothing under it yet
    _store(db_sessionmaker, old_keyring, "bob")
    # One altered blob under the primary among good ones does not stop the rotation.
    ann = _session_blob(engine, "ann")
    assert ann is not None
    _set_session_blob(engine, "ann", ann[:-1] + bytes([ann[-1] ^ 1]))

    report = rotate_keys(engine, new_keyring)

    assert (report.primary_checked, report.sessions_rotated) == (True, 1)
