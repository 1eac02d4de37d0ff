"""rotate-keys and a writer still on the old primary key (a replica shutting down, its
keep-alive or an in-flight refresh committing) that stores a secret in a row the scan already
passed. README, Commands: rotate-keys exits 1 "while anything still needs an old key";
"Rotating the encryption key" step 4: run it "until it exits 0: every stored secret is then
under the new key". So a run either rotates such a secret too or does not report complete."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring, session_aad
from auth_service.storage import key_rotation
from auth_service.storage.key_rotation import rotate_keys
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.secrets import SecretBox
from tests.storage.test_rotation import HookedKeyring, _key_entry, _store, _tokens

USERS = [f"user-{n}" for n in range(4)]


def _rings() -> tuple[Keyring, Keyring]:
    """The old ring, and the promoted one (new primary, old key still listed)."""
    old = Keyring.parse(Keyring.generate_key_value("old"))
    return old, Keyring.parse(f"{Keyring.generate_key_value('new')},{_key_entry(old)}")


def _still_under(engine: Engine, kid: str) -> list[str]:
    """Every stored secret (sessions and MFA challenges) under `kid`, by user."""
    with engine.connect() as connection:
        sessions = connection.execute(
            select(GarminAuthenticationState.user_id, GarminAuthenticationState.session_ciphertext)
        ).all()
        challenges = connection.execute(
            select(GarminMfaChallenge.user_id, GarminMfaChallenge.pending_ciphertext)
        ).all()
    return sorted(
        f"{what}:{user}"
        for what, rows in (("session", sessions), ("challenge", challenges))
        for user, blob in rows
        if blob is not None and Keyring.key_id_of(blob) == kid
    )


def _old_primary_replica(engine: Engine, old: Keyring) -> Callable[[str], None]:
    """What a replica still encrypting with the old key does: store a refreshed session for
    `user_id`, bumping its session version."""

    def refresh(user_id: str) -> None:
        state = GarminAuthenticationState
        with engine.begin() as connection:
            version = connection.scalar(
                select(state.session_version).where(state.user_id == user_id)
            )
            assert version is not None
            blob = SecretBox(old).seal_tokens(user_id, version + 1, _tokens(user_id, version + 2))
            connection.execute(
                update(state)
                .where(state.user_id == user_id)
                .values(session_ciphertext=blob, session_version=version + 1)
            )

    return refresh


def _rotating(associated_data: bytes, user_id: str) -> bool:
    """Whether rotate_keys is sealing `user_id`'s session (the hook sees its associated data)."""
    unbound = session_aad(user_id)
    return associated_data == unbound or associated_data.startswith(unbound + b"\x00")


def test_a_session_written_under_the_old_key_behind_the_scan_is_rotated_too(
    engine: Engine, db_sessionmaker: sessionmaker[Session]
) -> None:
    old, promoted = _rings()
    for user_id in USERS:
        _store(db_sessionmaker, old, user_id)
    old_primary_replica = _old_primary_replica(engine, old)
    written = False

    def writer(associated_data: bytes) -> None:
        # While the run works on user-3, after its scan passed user-0.
        nonlocal written
        if not written and _rotating(associated_data, "user-3"):
            written = True
            old_primary_replica("user-0")

    report = rotate_keys(engine, HookedKeyring(promoted, writer), batch_size=2)

    assert written
    assert _still_under(engine, "old") == [], f"left under the old key: {report}"
    assert report.complete
    assert report.sessions_rotated == len(USERS) + 1  # user-0 twice: before and after
    assert report.unfinished_user_ids == ()


def test_a_session_written_under_the_old_key_during_the_challenge_scan_is_rotated_too(
    engine: Engine, db_sessionmaker: sessionmaker[Session]
) -> None:
    # The sessions are done when the challenges are scanned: the second look must come after
    # both columns, not after each.
    old, promoted = _rings()
    for user_id in USERS:
        _store(db_sessionmaker, old, user_id, with_challenge=True)
    old_primary_replica = _old_primary_replica(engine, old)
    written = False

    def writer(associated_data: bytes) -> None:
        nonlocal written
        if not written and associated_data.startswith(b"garmin_mfa_challenge."):
            written = True
            old_primary_replica("user-2")

    report = rotate_keys(engine, HookedKeyring(promoted, writer), batch_size=2)

    assert written
    assert _still_under(engine, "old") == [], f"left under the old key: {report}"
    assert report.complete
    assert (report.sessions_rotated, report.challenges_rotated) == (len(USERS) + 1, len(USERS))


def test_a_replica_that_keeps_writing_under_the_old_key_leaves_the_run_incomplete(
    engine: Engine, db_sessionmaker: sessionmaker[Session]
) -> None:
    # An old-primary replica that writes user-0's session whenever the run rotates user-3's,
    # and user-3's whenever it rotates user-0's: one of them is under the old key again after
    # every pass, so the run cannot finish and must say so (exit 1), naming the user.
    old, promoted = _rings()
    for user_id in USERS:
        _store(db_sessionmaker, old, user_id)
    old_primary_replica = _old_primary_replica(engine, old)
    writes = 0

    def writer(associated_data: bytes) -> None:
        nonlocal writes
        for rotated, rewritten in (("user-3", "user-0"), ("user-0", "user-3")):
            if _rotating(associated_data, rotated):
                writes += 1
                old_primary_replica(rewritten)

    report = rotate_keys(engine, HookedKeyring(promoted, writer), batch_size=2)

    still_old = _still_under(engine, "old")
    assert len(still_old) == 1
    assert not report.complete, (
        f"rotate-keys reports complete (exit 0) while {still_old} is still under the old key"
    )
    assert [f"session:{user}" for user in report.unfinished_user_ids] == still_old
    # Each later pass met both rows again (the one it rewrote sorts after the one it
    # rotated): bounded passes, not a loop for as long as the replica writes.
    assert writes == 2 * (1 + key_rotation.SWEEP_PASSES)


def test_undecryptable_blobs_are_reported_once_and_not_as_unfinished(
    engine: Engine, db_sessionmaker: sessionmaker[Session]
) -> None:
    # The later passes meet them again (they stay under the old key): they are what they
    # were, not rows a writer keeps changing.
    old, promoted = _rings()
    for user_id in USERS:
        _store(db_sessionmaker, old, user_id, with_challenge=True)
    alien = SecretBox(Keyring.parse(Keyring.generate_key_value("old"))).seal_tokens(
        "user-1", 0, _tokens("user-1")
    )
    with engine.begin() as connection:
        connection.execute(
            update(GarminAuthenticationState)
            .where(GarminAuthenticationState.user_id == "user-1")
            .values(session_ciphertext=alien)
        )

    report = rotate_keys(engine, promoted, batch_size=2)

    assert report.undecryptable_session_user_ids == ("user-1",)
    assert report.undecryptable_challenge_user_ids == ()
    assert report.unfinished_user_ids == ()
    assert not report.complete
    assert _still_under(engine, "old") == ["session:user-1"]
