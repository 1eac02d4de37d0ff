"""check-config's "stored secrets" line and one user's altered ciphertext. check-config is the
shipped Deployment's init container: failing it over one row stops every new replica, while
the service itself answers DATA_LOSS SECRET_UNREADABLE for that user only (README, Errors:
"copied from another row ... log the user in again"). A key that really is wrong under its id
(no sampled secret opens) must still fail."""

from __future__ import annotations

from sqlalchemy import Engine, select, update

from auth_service.checks import run_checks
from auth_service.crypto import Keyring
from auth_service.storage.database import create_engine_for
from auth_service.storage.key_rotation import PRIMARY_KEY_SAMPLES, check_primary_key
from auth_service.storage.models import GarminAuthenticationState
from tests.service.test_check_config import K1, by_name, env, failed, key_material, store_session

__all__ = ["env"]


def _copy_session(database_url: str, source: str, target: str) -> None:
    """What someone with write access to the database (and no key) can do: put one user's
    ciphertext into another user's row, which then fails to decrypt."""
    state = GarminAuthenticationState
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as connection:
            blob = connection.scalar(
                select(state.session_ciphertext).where(state.user_id == source)
            )
            connection.execute(
                update(state).where(state.user_id == target).values(session_ciphertext=blob)
            )
    finally:
        engine.dispose()


def _primary_key_confirmed(database_url: str, key_entry: str) -> bool:
    engine: Engine = create_engine_for(database_url)
    try:
        return check_primary_key(engine, Keyring.parse(key_entry))
    finally:
        engine.dispose()


def test_one_altered_session_is_named_without_failing_the_stored_secrets_line(
    env: dict[str, str], database_url: str
) -> None:
    for user_id in ("aaron", "bob", "carol"):
        store_session(database_url, user_id, K1)
    # aaron sorts first: his row is the first sample of key id k1.
    _copy_session(database_url, "bob", "aaron")
    # The key is the replicas' key: rotate-keys' own check confirms it from the good rows.
    assert _primary_key_confirmed(database_url, K1)

    results = run_checks(env)

    problems = failed(results)
    assert "stored secrets" not in problems, (
        "check-config fails (every new replica's init container with it) over one altered "
        f"row: {problems.get('stored secrets')}"
    )
    line = by_name(results)["stored secrets"].detail
    assert line.startswith("sessions: k1=3 (each key id opened a sample); WARNING:"), line
    assert "'aaron'" in line
    assert "'bob'" not in line
    assert "'carol'" not in line
    assert key_material(K1) not in line


def test_a_wrong_key_under_the_id_still_fails_with_several_sessions_stored(
    env: dict[str, str], database_url: str
) -> None:
    users = [f"user-{n}" for n in range(PRIMARY_KEY_SAMPLES + 1)]
    for user_id in users:
        store_session(database_url, user_id, K1)
    impostor = Keyring.generate_key_value("k1")  # same id, other bytes
    env["GARMIN_AUTH_ENCRYPTION_KEYS"] = impostor

    problems = failed(run_checks(env))

    assert "the session of user 'user-0' is under key id 'k1'" in problems["stored secrets"]
    assert f"nor any other of the {PRIMARY_KEY_SAMPLES} sampled" in problems["stored secrets"]
    assert key_material(impostor) not in problems["stored secrets"]
