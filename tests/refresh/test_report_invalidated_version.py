"""ReportInvalidated names the version of the token Garmin refused.

A holder's 401 says the session is dead only for the token the service holds now. Before, a
report about a token the service had replaced since (its holder's RefreshLease, or any refresh
committed while the holder's request was out) wiped a good session: AUTH_EXPIRED, secrets gone,
the user asked to sign in again. With `session_version` the service refuses such a report
(INVALID_ARGUMENT, nothing changed); 0 (an older worker) is taken as before.
"""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.errors import InvalidArgument
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import SessionState
from tests.leases import read_row
from tests.refresh import ASKER, DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)

USER = "invalidated-version"


def test_a_refusal_of_a_replaced_token_keeps_the_session(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed(USER)
    grant = replicas[0].leases.lease_session(USER, "worker-1", None)
    held = grant.status.session_version
    # The session is refreshed for the holder meanwhile (its other request's RefreshLease).
    replicas[1].refresher.refresh(USER, held, ASKER, held_by=lease_digest(grant.lease.lease_id))
    assert read_row(db_sessionmaker, USER).session_version > held

    # The 401 on the token of the grant's version arrives now.
    with pytest.raises(InvalidArgument) as refused:
        replicas[0].leases.report_invalidated(
            grant.lease.lease_id, "401 on /userprofile", session_version=held
        )
    assert [v.field for v in refused.value.violations] == ["session_version"]
    row = read_row(db_sessionmaker, USER)
    assert row.state is SessionState.ACTIVE
    assert row.session_ciphertext is not None

    # A refusal of the token in force still ends it.
    status = replicas[0].leases.report_invalidated(
        grant.lease.lease_id, "401 on /userprofile", session_version=row.session_version
    )
    assert status.state is SessionState.AUTH_EXPIRED


@pytest.mark.parametrize("version", ["unknown", "current"])
def test_a_refusal_of_the_token_in_force_or_of_an_unknown_version_ends_the_session(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
    version: str,
) -> None:
    accounts.seed(USER)
    grant = replicas[0].leases.lease_session(USER, "worker-1", None)
    status = replicas[0].leases.report_invalidated(
        grant.lease.lease_id,
        "401 on /userprofile",
        session_version=0 if version == "unknown" else grant.status.session_version,
    )
    assert status.state is SessionState.AUTH_EXPIRED
    assert read_row(db_sessionmaker, USER).session_ciphertext is None


def test_a_negative_version_is_refused(
    replicas: tuple[Replica, Replica], accounts: DiAccounts
) -> None:
    accounts.seed(USER)
    grant = replicas[0].leases.lease_session(USER, "worker-1", None)
    with pytest.raises(InvalidArgument):
        replicas[0].leases.report_invalidated(grant.lease.lease_id, "401", session_version=-1)
