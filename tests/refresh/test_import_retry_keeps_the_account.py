"""An ImportSession retried with the session the service holds already installs nothing.

DI refresh tokens rotate: once the first import's refresh has rotated the token file's
refresh token R to R', R is dead at Garmin. Before, a client retrying the import (same token
file; the first attempt seemed to time out while it waited on Garmin) installed R again as a
new session version: the first import's store of R' missed the version and dropped R' ("a
login or import replaced it"), the retry's refresh sent the dead R, Garmin answered
invalid_grant and the account's session ended AUTH_EXPIRED. The same when the retry came just
after R' was stored. Now a token file is refreshed before it is stored, as the account's one
call in flight (test_import_checks_the_file_first.py): a retry during the first import waits
for it; one presenting a token the row's rotations replaced (their digests,
rotated_refresh_sha256) answers the session as it is; one presenting the refresh token the
row holds joins its refresh through the single-flight refresher.

Two replicas (two engines) on SQLite and PostgreSQL, the emulator over real HTTP.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.models import (
    GarminTokens,
    OAuth1Token,
    OAuth2Token,
    SessionState,
    SessionStatusView,
)
from auth_service.domain.views import refresh_token_digest
from auth_service.services.session_import import SessionImport
from auth_service.storage.models import GarminAuditEvent, GarminSessionChange
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row, stored_tokens
from tests.refresh import ARRIVAL_TIMEOUT_SECONDS, ASKER, DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)

USER = "import-retry-user"
EMAIL = f"{USER}@example.com"


@pytest.fixture
def importers(replicas: tuple[Replica, Replica]) -> tuple[SessionImport, SessionImport]:
    """ImportSession of each replica, on its own engine, with its own refresher."""
    return replicas[0].imports, replicas[1].imports


def _token_file(emulator: GarminEmulator) -> str:
    """python-garminconnect's token file of a new DI pair of the user."""
    emulator.add_user(EMAIL, "irrelevant-password")
    return json.dumps(emulator.garminconnect_tokens(EMAIL))


def _import_events(db: sessionmaker[Session]) -> int:
    with db() as session:
        return session.execute(
            select(func.count())
            .select_from(GarminAuditEvent)
            .where(GarminAuditEvent.user_id == USER, GarminAuditEvent.rpc == "ImportSession")
        ).scalar_one()


def _changes(db: sessionmaker[Session]) -> int:
    with db() as session:
        return session.execute(
            select(func.count())
            .select_from(GarminSessionChange)
            .where(GarminSessionChange.user_id == USER)
        ).scalar_one()


def _assert_alive(
    db: sessionmaker[Session], box: SecretBox, emulator: GarminEmulator, answers: str
) -> None:
    row = read_row(db, USER)
    assert (row.state, row.invalidated_reason) == (SessionState.ACTIVE, None), (
        f"the retried import ended the session: state={row.state}, "
        f"reason={row.invalidated_reason!r}; {answers}; Garmin counted "
        f"{emulator.refresh_token_reuses(EMAIL)} reuse(s) of a rotated-away refresh token"
    )
    stored = stored_tokens(db, box, USER)
    assert stored is not None
    assert stored.oauth2.refresh_token in emulator.live_refresh_tokens(EMAIL)
    reuses = emulator.refresh_token_reuses(EMAIL)
    assert reuses == 0, f"Garmin saw {reuses} reuse(s) of a rotated-away refresh token; {answers}"


def test_an_import_retried_during_the_first_imports_refresh_joins_it(
    importers: tuple[SessionImport, SessionImport],
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    token_file = _token_file(emulator)
    # Garmin is slow (within the 2 s timeout): the first refresh is answered after 0.5 s, a
    # second one after 1.5 s (before the fix, the retry's, sending the token the first one
    # had rotated away by then).
    emulator.fail_next(DI_TOKEN_PATH, None, delay=0.5)
    emulator.fail_next(DI_TOKEN_PATH, None, delay=1.5)
    before = emulator.request_count(DI_TOKEN_PATH)
    first: list[SessionStatusView | BaseException] = []

    def first_import() -> None:
        try:
            first.append(importers[0].import_session(USER, garminconnect_tokens=token_file))
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            first.append(exc)

    thread = threading.Thread(target=first_import)
    thread.start()
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_SECONDS
    while emulator.request_count(DI_TOKEN_PATH) == before:
        assert time.monotonic() < deadline, "the first import's refresh never reached Garmin"
        time.sleep(0.002)
    # The client gave up waiting and retries the same import on the other replica.
    try:
        retried: SessionStatusView | BaseException = importers[1].import_session(
            USER, garminconnect_tokens=token_file
        )
    except Exception as exc:  # noqa: BLE001 - reported by the assertions below
        retried = exc
    thread.join(15)

    answers = f"the retry answered {retried!r}, the first {first}"
    _assert_alive(db_sessionmaker, box, emulator, answers)
    # One refresh at Garmin (the first import's), whose pair both imports answer.
    assert emulator.di_refresh_count(EMAIL) == 1, answers
    assert isinstance(retried, SessionStatusView), answers
    assert isinstance(first[0], SessionStatusView), answers
    # Installed once, as Garmin's rotated pair.
    assert retried.session_version == first[0].session_version == 1, answers


def test_an_import_retried_after_the_first_imports_refresh_installs_nothing(
    importers: tuple[SessionImport, SessionImport],
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    token_file = _token_file(emulator)
    first = importers[0].import_session(USER, garminconnect_tokens=token_file)
    refreshed = stored_tokens(db_sessionmaker, box, USER)
    assert refreshed is not None
    events, changes = _import_events(db_sessionmaker), _changes(db_sessionmaker)
    # What the row keeps of the file's refresh token: its digest, never the token.
    file_refresh_token = json.loads(token_file)["di_refresh_token"]
    assert read_row(db_sessionmaker, USER).rotated_refresh_sha256 == refresh_token_digest(
        file_refresh_token
    )

    try:
        retried: SessionStatusView | BaseException = importers[1].import_session(
            USER, garminconnect_tokens=token_file
        )
    except Exception as exc:  # noqa: BLE001 - reported by the assertions below
        retried = exc

    answers = f"the retry answered {retried!r}, the first {first!r}"
    _assert_alive(db_sessionmaker, box, emulator, answers)
    assert retried == first, answers
    assert stored_tokens(db_sessionmaker, box, USER) == refreshed
    assert emulator.di_refresh_count(EMAIL) == 1, "the retry refreshed the session again"
    # Recorded as an import that changed nothing: an event, no change-log entry.
    assert (_import_events(db_sessionmaker), _changes(db_sessionmaker)) == (events + 1, changes)


def test_a_reimport_of_the_held_di_pair_leaves_the_session_and_its_lease(
    importers: tuple[SessionImport, SessionImport],
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    held = accounts.seed(USER)
    grant = replicas[0].leases.lease_session(USER, "worker-1", None, with_refresh_token=False)
    before = read_row(db_sessionmaker, USER)

    status = importers[1].import_session(USER, tokens=held)

    after = read_row(db_sessionmaker, USER)
    assert status.session_version == after.session_version == before.session_version, (
        f"the re-import of the pair the session holds installed it again as version "
        f"{after.session_version} (was {before.session_version}), ending the lease on it"
    )
    assert status.lease is not None
    assert (after.lease_id, after.fencing_token) == (grant.lease.lease_digest, 1)
    assert accounts.refreshes(USER) == 0


def test_an_import_of_the_token_a_holder_rotated_away_installs_nothing(
    importers: tuple[SessionImport, SessionImport],
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    accounts.seed(USER)
    grant = replicas[0].leases.lease_session(USER, "worker-1", None, with_refresh_token=True)
    # A worker_full holder refreshes by itself and reports the pair (ReportRefreshed).
    own = upstream.refresh(grant.tokens)
    reported = replicas[0].leases.report_refreshed(
        grant.lease.lease_id, own, session_version=grant.status.session_version
    )

    status = importers[1].import_session(USER, tokens=grant.tokens)

    assert status.session_version == reported.session_version, (
        "the import of the refresh token the holder's refresh rotated away was installed "
        f"(version {status.session_version}, was {reported.session_version})"
    )
    assert stored_tokens(db_sessionmaker, box, USER) == own
    assert read_row(db_sessionmaker, USER).lease_id == grant.lease.lease_digest


def test_new_credentials_are_installed_over_a_rotated_session(
    importers: tuple[SessionImport, SessionImport],
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    importers[0].import_session(USER, garminconnect_tokens=_token_file(emulator))
    newer = _token_file(emulator)  # the user signed in with python-garminconnect again

    status = importers[1].import_session(USER, garminconnect_tokens=newer)

    # The first file's pair (1), refreshed by the leases (none here), then the new file's
    # rotated pair (2), installed once.
    assert status.session_version == 2
    stored = stored_tokens(db_sessionmaker, box, USER)
    assert stored is not None
    assert stored.oauth2.refresh_token in emulator.live_refresh_tokens(EMAIL)
    assert read_row(db_sessionmaker, USER).rotated_refresh_sha256 == refresh_token_digest(
        json.loads(newer)["di_refresh_token"]
    )


def test_a_garth_reimport_is_installed_as_before(
    importers: tuple[SessionImport, SessionImport],
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    """Garth's exchange rotates nothing: importing the same garth session again is harmless
    and, as ever, makes it the user's new session."""
    garth = GarminTokens(
        oauth1=OAuth1Token(oauth_token="oauth1-token", oauth_token_secret="oauth1-secret"),
        oauth2=OAuth2Token(
            scope="CONNECT_READ",
            jti="jti-1",
            token_type="Bearer",
            access_token="garth-access-token",
            refresh_token="garth-refresh-token",
            expires_at=clock.now() + timedelta(hours=1),
            refresh_token_expires_at=None,
        ),
    )

    versions = [importers[0].import_session(USER, tokens=garth).session_version for _ in "ab"]

    assert versions == [1, 2]
    assert read_row(db_sessionmaker, USER).rotated_refresh_sha256 is None


def _refresh_lease(replica: Replica, db: sessionmaker[Session]) -> None:
    """One more rotation at Garmin by the service (a worker's RefreshLease, keep-alive)."""
    replica.refresher.refresh(USER, read_row(db, USER).session_version, ASKER)


def test_an_import_retried_after_more_rotations_installs_nothing(
    importers: tuple[SessionImport, SessionImport],
    replicas: tuple[Replica, Replica],
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    """Found by tests/reliability/test_refresh_interleavings.py: the first import's refresh,
    then a worker's RefreshLease, then the client's retry of the same file. Before, the row
    knew only the latest rotation's token: the retry installed the file's dead token and
    refreshed it (a reuse at Garmin; the session ended AUTH_EXPIRED)."""
    token_file = _token_file(emulator)
    first = importers[0].import_session(USER, garminconnect_tokens=token_file)
    for _ in range(3):
        _refresh_lease(replicas[1], db_sessionmaker)
    before = read_row(db_sessionmaker, USER).session_version

    retry = importers[1].import_session(USER, garminconnect_tokens=token_file)

    assert retry.session_version == before > first.session_version
    _assert_alive(db_sessionmaker, box, emulator, f"retry answered v{retry.session_version}")


@pytest.mark.parametrize("reuse_kills_newest", [False, True])
def test_the_imported_file_is_known_however_many_rotations_later(
    importers: tuple[SessionImport, SessionImport],
    replicas: tuple[Replica, Replica],
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    reuse_kills_newest: bool,
) -> None:
    """The same token file imported again after more rotations than the row keeps (a client
    re-running its onboarding days later). Its refresh token is the one the session started
    from: the row keeps its digest for the session's life, so nothing is sent to Garmin.
    Before, it had dropped out of the last four: the import presented it (a reuse at Garmin;
    where a reuse kills the newest token too, which the facts file leaves open, the live
    session died while the import answered "nothing was changed")."""
    token_file = _token_file(emulator)
    first = importers[0].import_session(USER, garminconnect_tokens=token_file)
    for _ in range(6):
        _refresh_lease(replicas[1], db_sessionmaker)
    held = stored_tokens(db_sessionmaker, box, USER)
    before = read_row(db_sessionmaker, USER).session_version
    emulator.di.reuse_kills_newest = reuse_kills_newest
    try:
        again = importers[1].import_session(USER, garminconnect_tokens=token_file)
    finally:
        emulator.di.reuse_kills_newest = False

    assert again.session_version == before > first.session_version
    assert stored_tokens(db_sessionmaker, box, USER) == held
    _assert_alive(db_sessionmaker, box, emulator, f"the import answered v{again.session_version}")
