"""An event exists if and only if its change was committed: both are written in one
transaction (or, for a lease's single write on PostgreSQL, in one statement), so a failure
after the event, or of the event itself, leaves neither without the other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.exc import IntegrityError

from auth_service import server
from auth_service.config import Settings
from auth_service.domain import audit
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import GarminTokens, LoginSucceeded, SessionState
from auth_service.services import connect, leases
from auth_service.storage.models import GarminAuthenticationState
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_emulator import GarminEmulator
from tests.audit import PASSWORD, read_events
from tests.service.test_login import stored_row


class Boom(Exception):
    """Raised after the event was written, before the transaction commits."""


@pytest.fixture
def application(service_settings: Settings) -> Iterator[server.Application]:
    application = server.build_application(service_settings)
    yield application
    application.engine.dispose()


def _tokens(settings: Settings, garmin: GarminEmulator, user_id: str) -> GarminTokens:
    email = f"{user_id}@example.com"
    garmin.add_user(email, PASSWORD)
    result = GarthUpstream(settings.upstream).login(email, PASSWORD)
    assert isinstance(result, LoginSucceeded)
    return result.tokens


def _explode(*_args: object, **_kwargs: object) -> None:
    raise Boom


def test_failure_after_the_event_rolls_back_import_and_its_event(
    application: server.Application,
    service_settings: Settings,
    garmin: GarminEmulator,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = _tokens(service_settings, garmin, "ann")
    # status_view runs after the change and its event, inside the transaction.
    monkeypatch.setattr(connect, "status_view", _explode)
    with pytest.raises(Boom):
        application.use_cases.imports.import_session("ann", tokens=tokens, garth_token=None)
    assert stored_row(database_url, "ann") is None
    assert read_events(database_url) == []

    monkeypatch.undo()
    application.use_cases.imports.import_session("ann", tokens=tokens, garth_token=None)
    assert [event.summary for event in read_events(database_url)] == [
        ("system", "ImportSession", "ann", "OK", "OK")
    ]


def test_a_grant_that_cannot_be_answered_is_released_with_its_failure(
    application: server.Application,
    service_settings: Settings,
    garmin: GarminEmulator,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A grant is a single write (Store.single_write): its statement and event are stored
    before the answer is built, so a failure while building it comes after both. The lease
    (whose id nobody received) is then released, as a sync attempt, and the release's event
    names the failure: never a change without its event, nor a lease held for nobody."""
    application.use_cases.imports.import_session(
        "bob", tokens=_tokens(service_settings, garmin, "bob"), garth_token=None
    )
    imported = read_events(database_url)
    assert len(imported) == 1

    with monkeypatch.context() as patch:
        patch.setattr(leases, "status_view", _explode)
        with pytest.raises(Boom):
            application.use_cases.leases.lease_session("bob", "w", None)
    row = stored_row(database_url, "bob")
    assert row is not None
    assert (row.lease_id, row.fencing_token) == (None, 1)
    assert row.last_sync_attempt_at is not None
    grant, release = read_events(database_url, imported[-1].id)
    assert grant.summary == ("system", "LeaseSession", "bob", "OK", "OK")
    assert release.summary == ("system", "LeaseSession", "bob", "INTERNAL", "INTERNAL")
    assert (release.lease_id, release.fencing_token) == (grant.lease_id, 1)


def test_a_release_and_its_event_are_one_write(
    application: server.Application,
    service_settings: Settings,
    garmin: GarminEmulator,
    database_url: str,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A release is a single write (Store.single_write): on PostgreSQL one autocommitted
    statement carries the release, its event and its change-log entry, so a failure while
    answering comes after all three are stored (as when the answer is lost on the wire); on
    SQLite the transaction rolls all of them back. Either way never one without the other."""
    application.use_cases.imports.import_session(
        "bob", tokens=_tokens(service_settings, garmin, "bob"), garth_token=None
    )
    grant = application.use_cases.leases.lease_session("bob", "w", None)
    granted = read_events(database_url)

    with monkeypatch.context() as patch:
        patch.setattr(leases, "status_view", _explode)
        with pytest.raises(Boom):
            application.use_cases.leases.release_lease(grant.lease.lease_id, None)
    row = stored_row(database_url, "bob")
    assert row is not None
    after = [event.summary for event in read_events(database_url, granted[-1].id)]
    if backend == "postgresql":
        assert row.lease_id is None
        assert after == [("system", "ReleaseLease", "bob", "OK", "OK")]
    else:
        assert row.lease_id == lease_digest(grant.lease.lease_id)  # rolled back
        assert after == []


def test_a_failing_event_insert_rolls_back_the_change(
    application: server.Application,
    service_settings: Settings,
    garmin: GarminEmulator,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = _tokens(service_settings, garmin, "cal")
    application.use_cases.imports.import_session("cal", tokens=tokens, garth_token=None)
    before = read_events(database_url)
    version = _row(database_url, "cal").session_version

    # The database refuses the event itself (caller is NOT NULL): the change goes with it.
    monkeypatch.setattr(audit, "caller_name", lambda: None)
    with pytest.raises(IntegrityError):
        application.use_cases.leases.lease_session("cal", "w", None)
    with pytest.raises(IntegrityError):
        application.use_cases.imports.import_session("cal", tokens=tokens, garth_token=None)
    with pytest.raises(IntegrityError):
        application.use_cases.sessions.delete_session("cal")

    row = _row(database_url, "cal")
    assert row.state == SessionState.ACTIVE
    assert (row.lease_id, row.fencing_token, row.session_version) == (None, 0, version)
    assert read_events(database_url) == before


def _row(database_url: str, user_id: str) -> GarminAuthenticationState:
    row = stored_row(database_url, user_id)
    assert row is not None
    return row
