"""GetStatus(validate) never refreshes a session leased while it validated.

It decides whether the session is leased from the row it read before its Garmin validation
call. When Garmin then refused the access token, it refreshed with a claim that ignored
leases, so a lease granted meanwhile was refreshed from under its holder: a `worker_full`
holder (which refreshes by itself) held a refresh token the service had just rotated away,
its lease live. Now the refresh claims only an unleased session and answers LEASE_HELD, as
the README says of a leased session ("the refresh, and with it the verdict, belongs to the
holder"). Two replicas on one database (SQLite and PostgreSQL), the emulator over HTTP.
"""

from __future__ import annotations

import threading
import time

import pytest

from auth_service.domain.errors import LeaseHeld
from auth_service.domain.models import LeaseGrant
from garmin_client.endpoints import PROFILE_PATH
from garmin_emulator import GarminEmulator
from tests.refresh import DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)

USER = "validate-during-grant"


def test_validate_does_not_rotate_the_refresh_token_of_a_lease_granted_meanwhile(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
) -> None:
    # A fresh pair by our records (20 h left): no grant refreshes it. Garmin, though, has
    # stopped accepting the access token (revoked, clock skew): validation meets a 401.
    accounts.seed(USER)
    emulator.expire_access_tokens(accounts.email(USER))
    before = emulator.request_count(PROFILE_PATH)
    # Hold the validation's Connect API call open while a worker leases the session.
    emulator.fail_next(PROFILE_PATH, None, delay=1.0)
    grants: list[LeaseGrant] = []

    def lease_during_validation() -> None:
        deadline = time.monotonic() + 10
        while emulator.request_count(PROFILE_PATH) == before:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        # Another replica grants a legacy (worker_full) holder the whole session.
        grants.append(replicas[1].leases.lease_session(USER, "legacy-worker", None))

    leasing = threading.Thread(target=lease_during_validation)
    leasing.start()
    outcome: object
    try:
        outcome = replicas[0].sessions.get_status(USER, validate=True)
    except LeaseHeld as exc:
        outcome = exc
    leasing.join(15)

    assert grants, "the lease was not granted during the validation"
    handed = grants[0].tokens.oauth2.refresh_token
    live = set(emulator.live_refresh_tokens(accounts.email(USER)))
    assert handed in live, (
        "GetStatus(validate) refreshed a session leased (worker_full) while it validated: "
        f"the holder's refresh token is dead at Garmin while its lease is live; GetStatus "
        f"answered {type(outcome).__name__}, Garmin counted {accounts.refreshes(USER)} "
        "refresh(es)"
    )
    assert isinstance(outcome, LeaseHeld)
