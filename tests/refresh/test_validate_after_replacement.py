"""GetStatus(validate) whose refresh is overtaken by an ImportSession: the refresher hands
back the imported tokens (by_us=False). Before, GetStatus then validated the imported access
token as if it were fresh, and an imported token file whose access token had expired (its
refresh token still live) was ENDED on Garmin's 401 without ever being refreshed. A 401 to
tokens this call did not obtain is now no verdict."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.models import GarminTokens, SessionState
from auth_service.storage.secrets import SecretBox
from garmin_emulator import GarminEmulator
from tests.fixtures.di_upstream import di_tokens
from tests.leases import read_row
from tests.refresh import DiAccounts, Replica, during_next_refresh

pytestmark = pytest.mark.timeout(60)

USER = "validate-import-user"


def test_import_landing_during_validate_refresh_is_not_ended(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    # A DI session whose access token has expired: GetStatus(validate) refreshes it first.
    accounts.seed(USER, access_in=timedelta(seconds=-5))
    email = accounts.email(USER)
    importer = replicas[1].imports
    imported: list[GarminTokens] = []

    def import_token_file() -> None:
        # The user's token file: its refresh token is live, its access token expired (at
        # Garmin too, as a saved file's access token usually is).
        tokens = di_tokens(emulator.issue_di_tokens(email))
        emulator.expire_access_tokens(email)
        tokens = dataclasses.replace(
            tokens,
            oauth2=dataclasses.replace(
                tokens.oauth2, expires_at=clock.now() - timedelta(minutes=1)
            ),
        )
        importer.import_session(USER, tokens=tokens)
        imported.append(tokens)

    with during_next_refresh(emulator, import_token_file):
        status = replicas[0].sessions.get_status(USER, validate=True)

    assert imported
    row = read_row(db_sessionmaker, USER)
    # The imported session's refresh token was never even tried: it is still live at Garmin.
    assert imported[0].oauth2.refresh_token in emulator.live_refresh_tokens(email)
    assert (row.state, row.invalidated_reason) == (SessionState.ACTIVE, None), (
        f"GetStatus(validate) ended the freshly imported session: state={row.state}, "
        f"reason={row.invalidated_reason!r}, answered {status.state}"
    )
