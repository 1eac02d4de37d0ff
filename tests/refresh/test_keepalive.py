"""Keep-alive: idle DI sessions are refreshed before their refresh token dies; leased, far
from dying and garth sessions are left alone; two replicas never refresh one twice."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import LoginSucceeded, SessionState
from auth_service.services.keepalive import KEEPALIVE_REJECTED, KeepAliveReport
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.leases import read_row, seed_active, stored_tokens

from . import ASKER, DiAccounts, Replica

pytestmark = pytest.mark.timeout(120)

WINDOW = timedelta(days=7)  # RefreshSettings' default keep-alive window


def test_idle_sessions_are_refreshed_before_their_refresh_token_dies(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
    clock: FakeClock,
) -> None:
    dying = accounts.seed("ka-dying", refresh_in=timedelta(days=3))
    accounts.seed("ka-unknown", refresh_in=None)  # imported: expiry unknown, due at once
    accounts.seed("ka-far", refresh_in=timedelta(days=20))
    accounts.seed("ka-leased", refresh_in=timedelta(days=3))
    grant = replicas[0].leases.lease_session("ka-leased", "worker-a", None)
    assert accounts.refreshes("ka-leased") == 0
    versions = {user: read_row(db_sessionmaker, user).session_version for user in ("ka-far",)}

    report = replicas[1].keepalive.run_once()

    assert report == KeepAliveReport(ran=True, refreshed=2)
    for user in ("ka-dying", "ka-unknown"):
        assert accounts.refreshes(user) == 1
        row = read_row(db_sessionmaker, user)
        assert row.state is SessionState.ACTIVE
        assert row.refresh_token_expires_at is not None
        assert row.refresh_token_expires_at > clock.now() + timedelta(days=29)
    fresh = stored_tokens(db_sessionmaker, box, "ka-dying")
    assert fresh is not None
    assert fresh.oauth2.refresh_token != dying.oauth2.refresh_token
    # Never a leased session, nor one far from dying.
    assert accounts.refreshes("ka-leased") == 0
    assert read_row(db_sessionmaker, "ka-leased").lease_id == lease_digest(grant.lease.lease_id)
    assert accounts.refreshes("ka-far") == 0
    assert read_row(db_sessionmaker, "ka-far").session_version == versions["ka-far"]
    for user in ("ka-dying", "ka-unknown", "ka-far", "ka-leased"):
        assert accounts.reuses(user) == 0
    # Nothing is due any more.
    assert replicas[0].keepalive.run_once() == KeepAliveReport(ran=True)


def test_a_session_kept_alive_survives_past_its_old_expiry(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    accounts.seed("ka-idle", refresh_in=timedelta(seconds=2))
    assert replicas[0].keepalive.run_once().refreshed == 1
    # Past the old refresh token's death (at Garmin too): the rotated one lives on.
    clock.advance(3)
    threading.Event().wait(2.5)
    assert len(emulator.live_refresh_tokens(accounts.email("ka-idle"))) == 1
    version = read_row(db_sessionmaker, "ka-idle").session_version
    refreshed = replicas[1].refresher.refresh("ka-idle", version, ASKER)
    assert refreshed.by_us
    assert accounts.reuses("ka-idle") == 0


def test_two_replicas_passing_at_once_refresh_each_session_once(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
) -> None:
    users = [f"ka-many-{index}" for index in range(12)]
    for user in users:
        accounts.seed(user, refresh_in=timedelta(days=1))
    emulator.latency_seconds = 0.02
    reports: list[KeepAliveReport] = []
    threads = [
        threading.Thread(target=lambda r=replica: reports.append(r.keepalive.run_once()))
        for replica in replicas
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(report.refreshed for report in reports) == len(users)
    for user in users:
        assert accounts.refreshes(user) == 1
        assert accounts.reuses(user) == 0
    assert emulator.peak_in_flight(DI_TOKEN_PATH) <= 2 * 4


def test_keepalive_ends_a_revoked_session_and_leaves_garth_sessions_alone(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    revoked = accounts.seed("ka-revoked", refresh_in=timedelta(days=1))
    emulator.revoke_tokens(accounts.email("ka-revoked"))
    # A garth session lives on its OAuth1 token: keep-alive never touches it.
    emulator.add_user("ka-garth@example.com", "garth-password")
    login = upstream.login("ka-garth@example.com", "garth-password")
    assert isinstance(login, LoginSucceeded)
    seed_active(db_sessionmaker, accounts.box, "ka-garth", login.tokens, clock.now())
    emulator.reset_records()

    with caplog.at_level(logging.DEBUG):
        report = replicas[0].keepalive.run_once()

    assert report == KeepAliveReport(ran=True, ended=1)
    row = read_row(db_sessionmaker, "ka-revoked")
    assert (row.state, row.invalidated_reason) == (SessionState.AUTH_EXPIRED, KEEPALIVE_REJECTED)
    assert emulator.exchange_count("ka-garth@example.com") == 0
    assert read_row(db_sessionmaker, "ka-garth").state is SessionState.ACTIVE
    text = caplog.text
    for secret in (revoked.oauth2.access_token, revoked.oauth2.refresh_token):
        assert secret not in text
