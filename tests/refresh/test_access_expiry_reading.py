"""How the access token's expiry is read from a refresh answer, seen through lease grants.

The facts (shared/garmin-di-auth.md): the access token is a JWT whose `exp` says when it
dies; trust expires_in/exp, never a constant. The token endpoint
(auth_service/upstream/di/token_endpoint.py::_access_expiry) took `expires_in` whenever it
was readable and never looked at `exp` then, and read 0.5 as "expires now"; it now takes the
earlier of the two, and a fraction under a second as unreadable.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.jwt_payload import jwt_payload
from garmin_emulator import GarminEmulator
from tests.leases import read_row

from . import DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)


def _exp(access_token: str) -> datetime:
    return datetime.fromtimestamp(jwt_payload(access_token)["exp"], UTC)


def test_a_fractional_expires_in_is_not_read_as_expiring_now(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    """expires_in 0.5 was truncated to 0 after the "positive" check, so the token was stored
    as expiring the moment it was issued (0 or -5 fall back to the JWT's exp, as
    tests/upstream/test_di_refresh.py pins), and every later grant rotated it again."""
    first, second = replicas
    accounts.seed("frac", access_in=timedelta(seconds=-5))
    emulator.di.answer_overrides = {"expires_in": 0.5}

    grant = first.leases.lease_session("frac", "worker-1", None)
    assert accounts.refreshes("frac") == 1
    stored = read_row(db_sessionmaker, "frac").access_token_expires_at
    jwt_exp = _exp(grant.tokens.oauth2.access_token)
    first.leases.release_lease(grant.lease.lease_id, None)

    # A minute later another worker leases the user: the token lives ~29 h more by its exp.
    clock.advance(60)
    again = second.leases.lease_session("frac", "worker-2", None)
    second.leases.release_lease(again.lease.lease_id, None)

    assert jwt_exp > clock.now() + timedelta(hours=20)
    assert stored is not None
    assert stored > clock.now(), (
        f"stored access expiry {stored} is the issue time; the JWT says {jwt_exp}"
    )
    assert accounts.refreshes("frac") == 1, "a second rotation for a token with 29 h left"


def test_an_expires_in_longer_than_the_jwt_exp_hands_out_a_dead_token(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    clock: FakeClock,
) -> None:
    """An answer whose expires_in outlives the JWT's own exp: the token dies at exp (Garmin's
    API checks the JWT); the service stored now + expires_in and handed the dead token out."""
    first, second = replicas
    accounts.seed("disagree", access_in=timedelta(seconds=-5))
    # Garmin's token really lives 3 s (its JWT exp, and the emulator's API agrees) while the
    # answer's expires_in says the recorded 105487 s.
    emulator.di.access_token_expires_in = 3
    emulator.di.answer_overrides = {"expires_in": 105_487}

    grant = first.leases.lease_session("disagree", "worker-1", None)
    assert accounts.refreshes("disagree") == 1
    first.leases.release_lease(grant.lease.lease_id, None)

    time.sleep(4)
    clock.advance(4)
    again = second.leases.lease_session("disagree", "worker-2", None)
    handed_exp = _exp(again.tokens.oauth2.access_token)
    believed = again.tokens.oauth2.expires_at
    assert handed_exp > clock.now(), (
        f"the grant handed out an access token whose JWT exp ({handed_exp}) has passed; "
        f"the service believed it valid until {believed}"
    )
