"""ImportSession of a token file asks Garmin before it stores anything.

Before, the file's pair was installed first and refreshed after. An old copy of the file
(its refresh token rotated away by whoever used it since) then replaced the live session,
Garmin rejected its refresh, and the session ended AUTH_EXPIRED. Putting the replaced session
back was only safe while nobody else could have rotated it: not while a lease held it (a
worker_full holder refreshes by itself) nor during another replica's refresh. Found by
tests/reliability/test_refresh_interleavings.py with imports on. Garmin being busy also
left the file's pair stored unchecked. Now the file's pair is refreshed first, and only
the pair Garmin answered is installed. A rejected file changes nothing, and so does a busy
Garmin: the caller is told to retry.

Two replicas (two engines) on SQLite and PostgreSQL, the emulator over real HTTP.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.errors import GarminRateLimited, GarminUnavailable, InvalidArgument
from auth_service.domain.models import SessionState
from auth_service.services.session_import import SessionImport
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row, stored_tokens
from tests.refresh import ASKER, DiAccounts, Replica, during_next_refresh

pytestmark = pytest.mark.timeout(60)

USER = "import-check-user"
EMAIL = f"{USER}@example.com"


@pytest.fixture
def importers(replicas: tuple[Replica, Replica]) -> tuple[SessionImport, SessionImport]:
    """ImportSession of each replica, on its own engine, with its own refresher."""
    return replicas[0].imports, replicas[1].imports


def _old_copy(emulator: GarminEmulator, upstream: UpstreamRouter) -> str:
    """A token file of the user whose refresh token was rotated away since it was saved
    (its client refreshed once more, then the file was copied back)."""
    saved = json.dumps(emulator.garminconnect_tokens(EMAIL))
    upstream.refresh(tokens_from_garminconnect(saved))
    return saved


def test_an_old_copy_imported_while_a_worker_full_holder_has_the_session_changes_nothing(
    importers: tuple[SessionImport, SessionImport],
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    accounts.seed(USER)
    grant = replicas[0].leases.lease_session(USER, "worker-1", None, with_refresh_token=True)
    old_copy = _old_copy(emulator, upstream)
    before = read_row(db_sessionmaker, USER)

    with pytest.raises(InvalidArgument) as refused:
        importers[1].import_session(USER, garminconnect_tokens=old_copy)

    assert "garminconnect_tokens" in str(refused.value)
    after = read_row(db_sessionmaker, USER)
    assert (after.state, after.invalidated_reason) == (SessionState.ACTIVE, None), (
        f"the old copy's import ended the session ({after.invalidated_reason!r})"
    )
    assert (after.session_version, after.lease_id) == (
        before.session_version,
        grant.lease.lease_digest,
    )
    # The holder goes on as if nothing happened: its own refresh and report are accepted.
    own = upstream.refresh(grant.tokens)
    replicas[0].leases.report_refreshed(
        grant.lease.lease_id, own, session_version=grant.status.session_version
    )
    assert stored_tokens(db_sessionmaker, box, USER) == own


def test_an_old_copy_imported_during_another_replicas_refresh_changes_nothing(
    importers: tuple[SessionImport, SessionImport],
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    accounts.seed(USER)
    old_copy = _old_copy(emulator, upstream)
    refused: list[BaseException] = []

    def import_old_copy() -> None:
        try:
            importers[1].import_session(USER, garminconnect_tokens=old_copy)
        except InvalidArgument as exc:
            refused.append(exc)

    # The old copy comes in while a refresh of the stored session is with Garmin.
    with during_next_refresh(emulator, import_old_copy):
        replicas[0].refresher.refresh(USER, read_row(db_sessionmaker, USER).session_version, ASKER)

    assert len(refused) == 1
    row = read_row(db_sessionmaker, USER)
    assert (row.state, row.invalidated_reason) == (SessionState.ACTIVE, None)
    stored = stored_tokens(db_sessionmaker, box, USER)
    assert stored is not None
    assert stored.oauth2.refresh_token in emulator.live_refresh_tokens(EMAIL)


@pytest.mark.parametrize(("answer", "error"), [(503, GarminUnavailable), (429, GarminRateLimited)])
def test_a_token_file_is_not_stored_while_garmin_is_busy(
    importers: tuple[SessionImport, SessionImport],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    answer: int,
    error: type[Exception],
) -> None:
    held = accounts.seed(USER)
    before = read_row(db_sessionmaker, USER)
    emulator.add_user(EMAIL, "irrelevant-password")
    token_file = emulator.garminconnect_tokens(EMAIL)
    emulator.fail_next(DI_TOKEN_PATH, answer)

    with pytest.raises(error):
        importers[0].import_session(USER, garminconnect_tokens=json.dumps(token_file))

    assert read_row(db_sessionmaker, USER).session_version == before.session_version
    assert stored_tokens(db_sessionmaker, box, USER) == held
    # The file is untouched at Garmin: the caller's retry imports it.
    assert token_file["di_refresh_token"] in emulator.live_refresh_tokens(EMAIL)


def test_a_live_token_file_replaces_the_session_once_refreshed(
    importers: tuple[SessionImport, SessionImport],
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    accounts.seed(USER)
    replicas[0].leases.lease_session(USER, "worker-1", None, with_refresh_token=True)
    before = read_row(db_sessionmaker, USER)
    emulator.add_user(EMAIL, "irrelevant-password")
    token_file = emulator.garminconnect_tokens(EMAIL)

    status = importers[1].import_session(USER, garminconnect_tokens=json.dumps(token_file))

    # One new version: the file's pair as Garmin rotated it, stored validated; the lease on
    # the session it replaced ended (its holder's next report answers LEASE_LOST).
    after = read_row(db_sessionmaker, USER)
    assert status.session_version == after.session_version == before.session_version + 1
    assert status.refresh_token_expires_at is not None
    assert after.last_validated_at is not None
    assert after.lease_id is None
    stored = stored_tokens(db_sessionmaker, box, USER)
    assert stored is not None
    live = emulator.live_refresh_tokens(EMAIL)
    assert stored.oauth2.refresh_token in live
    assert token_file["di_refresh_token"] not in live
