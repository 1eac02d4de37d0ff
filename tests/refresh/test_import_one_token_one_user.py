"""One imported DI refresh token serves one user id.

DI refresh tokens rotate: two rows holding one refresh token are refreshed each by itself,
and the second refresh finds the token dead (invalid_grant) and ends that session. Before,
ImportSession let one token file (or one pair given field by field) in for two user ids:

- a pair imported as given for one user id, then as a token file for another: the second
  import refreshed the token the first row held, whose next refresh then ended it;
- the same pair given field by field for two user ids: two ACTIVE rows on one token;
- one token file imported for two user ids: the second import sent Garmin the token the first
  one's refresh had killed, a reuse (whether Garmin then revokes the newest token too is
  uncertain: shared/garmin-di-auth.md).

Now an import of a refresh token that another user id's ACTIVE session was imported from
answers INVALID_ARGUMENT on the field that carried it, Garmin not asked and nothing changed;
a partial unique index refuses two such rows committed at once. Both databases, the DI
provider over HTTP to the emulator.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import DomainError, InvalidArgument, RefreshTokenImportedElsewhere
from auth_service.domain.models import GarminTokens, SessionState
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from garmin_emulator import GarminEmulator
from tests.fixtures.di_upstream import di_tokens
from tests.refresh import ASKER, DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)

FIRST, SECOND = "import-first", "import-second"
# Whose Garmin account the pair belongs to (the emulator counts its refreshes).
OWNER = "import-owner"


def _issue(emulator: GarminEmulator) -> GarminTokens:
    """A fresh DI pair for OWNER's account, stored nowhere (what a user's client holds)."""
    email = DiAccounts.email(OWNER)
    emulator.add_user(email, "irrelevant-password")
    return di_tokens(emulator.issue_di_tokens(email))


def _token_file(tokens: GarminTokens) -> str:
    return json.dumps(
        {
            "di_token": tokens.oauth2.access_token,
            "di_refresh_token": tokens.oauth2.refresh_token,
            "di_client_id": tokens.di_client_id,
        }
    )


def _refused_field(call: object) -> str:
    try:
        answer: object = call()  # type: ignore[operator]
    except DomainError as exc:
        answer = exc
    assert isinstance(answer, InvalidArgument), (
        f"the second user id's import of the same refresh token answered {answer!r}, "
        "not INVALID_ARGUMENT"
    )
    return answer.violations[0].field


def _first_session_lives(replica: Replica, accounts: DiAccounts, garmin_asked: int) -> None:
    """FIRST's session is untouched: ACTIVE, and its refresh token still refreshes."""
    assert accounts.refreshes(OWNER) == garmin_asked, "Garmin was asked for the second import"
    assert accounts.reuses(OWNER) == 0
    status = replica.sessions.get_status(FIRST, validate=False)
    assert status.state is SessionState.ACTIVE
    replica.refresher.refresh(FIRST, status.session_version, ASKER, unleased=True)
    assert replica.sessions.get_status(FIRST, validate=False).state is SessionState.ACTIVE


def test_a_token_file_imported_for_one_user_id_is_refused_for_another(
    replicas: tuple[Replica, Replica], accounts: DiAccounts, emulator: GarminEmulator
) -> None:
    token_file = _token_file(_issue(emulator))
    replicas[0].imports.import_session(FIRST, garminconnect_tokens=token_file)
    asked = accounts.refreshes(OWNER)

    field = _refused_field(
        lambda: replicas[1].imports.import_session(SECOND, garminconnect_tokens=token_file)
    )

    assert field == "garminconnect_tokens"
    assert replicas[0].sessions.get_status(SECOND, validate=False).state is not (
        SessionState.ACTIVE
    )
    _first_session_lives(replicas[0], accounts, asked)


def test_a_pair_imported_as_given_is_not_refreshed_away_by_another_user_ids_token_file(
    replicas: tuple[Replica, Replica], accounts: DiAccounts, emulator: GarminEmulator
) -> None:
    pair = _issue(emulator)
    replicas[0].imports.import_session(FIRST, tokens=pair)

    field = _refused_field(
        lambda: replicas[1].imports.import_session(SECOND, garminconnect_tokens=_token_file(pair))
    )

    assert field == "garminconnect_tokens"
    _first_session_lives(replicas[0], accounts, 0)


def test_one_pair_given_field_by_field_is_refused_for_a_second_user_id(
    replicas: tuple[Replica, Replica], accounts: DiAccounts, emulator: GarminEmulator
) -> None:
    pair = _issue(emulator)
    replicas[0].imports.import_session(FIRST, tokens=pair)

    field = _refused_field(lambda: replicas[1].imports.import_session(SECOND, tokens=pair))

    assert field == "session"
    _first_session_lives(replicas[0], accounts, 0)


def test_the_same_user_ids_retry_and_a_disconnected_holder_are_no_conflict(
    replicas: tuple[Replica, Replica], accounts: DiAccounts, emulator: GarminEmulator
) -> None:
    pair = _issue(emulator)
    replicas[0].imports.import_session(FIRST, tokens=pair)
    # The same user id's retry is no conflict (it installs nothing).
    replicas[1].imports.import_session(FIRST, tokens=pair)
    # Once FIRST is disconnected, the token is nobody's: SECOND may import it.
    replicas[0].sessions.delete_session(FIRST)

    status = replicas[1].imports.import_session(SECOND, garminconnect_tokens=_token_file(pair))

    assert status.state is SessionState.ACTIVE
    assert accounts.refreshes(OWNER) == 1


def test_the_database_refuses_two_active_rows_imported_from_one_token(
    replicas: tuple[Replica, Replica],
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    """The check and the install are two statements: two imports committed at once meet the
    partial unique index, whose refusal is the same INVALID_ARGUMENT."""
    pair = _issue(emulator)
    replicas[0].imports.import_session(FIRST, tokens=pair)
    units = UnitsOfWork(SqlStore(db_sessionmaker, box), clock)

    def install_for_second() -> None:
        with units() as uow:
            row = uow.sessions.lock_or_create(SECOND, uow.now)
            token = pair.oauth2.refresh_token
            uow.sessions.install_tokens(
                row, pair, uow.now, validated=False, imported_refresh_token=token
            )

    with pytest.raises(RefreshTokenImportedElsewhere):
        install_for_second()
    # Nothing of it was committed.
    assert replicas[0].sessions.get_status(SECOND, validate=False).state is not (
        SessionState.ACTIVE
    )
