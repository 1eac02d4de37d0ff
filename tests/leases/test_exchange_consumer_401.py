"""Garmin refusing our OAuth consumer, or this replica's clock, ends no garth session.

Before, a 401 on garth's OAuth1 -> OAuth2 exchange was taken as the session's death whatever
Garmin refused (garmin_client.answers: SessionRejected; services/session_refresh then set
AUTH_EXPIRED and wiped the secrets): with a typo in GARMIN_AUTH_OAUTH_CONSUMER_SECRET, a
rotated consumer key or a replica's clock far off, every garth session's next refresh ended it,
and garth sessions cannot be signed in again (Garmin blocks fresh garth logins since March
2026). The sign-in path already said such a 401 "points at the consumer key"
(upstream/garth/sso.py), and the DI path answers a refused client id UNAVAILABLE. Now the
exchange's 401 ends a session only after the process saw Garmin accept the same consumer
(auth_service.upstream.garth.exchange_refusals); otherwise the grant answers
GARMIN_UNAVAILABLE and the session stays as it was.

Real garth adapter, emulator over HTTP, both databases.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.models import SessionState
from auth_service.services.leases import LeaseService
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.garth.exchange_refusals import forget_all
from garmin_emulator import GarminEmulator
from tests.leases import (
    GarminAccounts,
    build_service,
    read_row,
    refused_consumer_garth,
    stored_tokens,
)

from .conftest import CONSUMER_KEY


def test_a_wrong_consumer_secret_does_not_end_good_garth_sessions(
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    service: LeaseService,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    tokens = accounts.seed("u-1", timedelta(seconds=1))  # a good session, due for an exchange
    misconfigured = refused_consumer_garth(emulator, CONSUMER_KEY)
    restarted = build_service(db_sessionmaker, box, misconfigured, clock)
    clock.advance(2)

    # Before: SESSION_NOT_ACTIVE, the session AUTH_EXPIRED and its secrets wiped.
    with pytest.raises(GarminUnavailable):
        restarted.lease_session("u-1", "worker", None)

    row = read_row(db_sessionmaker, "u-1")
    assert row.state is SessionState.ACTIVE, (row.state, row.invalidated_reason)
    assert stored_tokens(db_sessionmaker, box, "u-1") == tokens
    # The operator fixes the secret: the same session is granted, refreshed at Garmin.
    grant = service.lease_session("u-1", "worker", None)
    assert grant.tokens.oauth2.access_token != tokens.oauth2.access_token


def test_a_clock_far_off_after_a_restart_does_not_end_good_garth_sessions(
    accounts: GarminAccounts,
    emulator: GarminEmulator,
    service: LeaseService,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    accounts.seed("u-2", timedelta(seconds=1))
    accounts.seed("u-3", timedelta(seconds=1))
    forget_all()  # the replica restarted, its clock an hour off
    emulator.oauth_clock_skew_seconds = 3600.0
    clock.advance(2)

    for user_id in ("u-2", "u-3"):
        # Before: both sessions AUTH_EXPIRED.
        with pytest.raises(GarminUnavailable):
            service.lease_session(user_id, "worker", None)
        assert read_row(db_sessionmaker, user_id).state is SessionState.ACTIVE

    emulator.oauth_clock_skew_seconds = 0.0
    for user_id in ("u-2", "u-3"):
        service.lease_session(user_id, "worker", None)
