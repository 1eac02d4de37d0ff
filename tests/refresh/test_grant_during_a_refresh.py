"""A lease granted while another refresh of the session (keep-alive) is with Garmin must not
hand out the refresh token that refresh is rotating away. Before, the grant neither waited
for the live refresh claim nor refused: a `worker_full` holder (legacy workers that refresh by
themselves) then refreshed with a dead token, which Garmin counts as a reuse (invalid_grant;
per the facts file it may kill the newest token too). README: "The new pair is committed
before any token from it is handed out, and an old refresh token is never sent again". The
grant now joins the refresh in flight and hands out the pair it stored."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.errors import GarminSessionRejected
from auth_service.domain.models import LeaseGrant
from auth_service.storage.secrets import SecretBox
from auth_service.upstream.router import UpstreamRouter
from garmin_emulator import GarminEmulator
from tests.leases import stored_tokens
from tests.refresh import DiAccounts, Replica, during_next_refresh

pytestmark = pytest.mark.timeout(60)

USER = "ka-grant-user"


def test_grant_during_keepalive_refresh_hands_out_a_live_refresh_token(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    # Idle, its refresh token dies in 3 days (keep-alive's window is 7), access token fresh:
    # keep-alive refreshes it, a grant does not need to.
    accounts.seed(USER, refresh_in=timedelta(days=3))
    grants: list[LeaseGrant] = []

    def grant_elsewhere() -> None:
        grants.append(replicas[1].leases.lease_session(USER, "legacy-worker", None))

    with during_next_refresh(emulator, grant_elsewhere, hold=1.0):
        report = replicas[0].keepalive.run_once()

    assert report.refreshed == 1
    assert grants
    handed = grants[0].tokens
    stored = stored_tokens(db_sessionmaker, box, USER)
    assert stored is not None
    live = set(emulator.live_refresh_tokens(accounts.email(USER)))
    # The legacy holder refreshes by itself with what it was handed.
    outcome: object
    try:
        outcome = upstream.refresh(handed)
    except GarminSessionRejected as exc:
        outcome = exc
    handed_is_live = handed.oauth2.refresh_token in live
    assert handed_is_live, (
        f"the grant handed out a refresh token that keep-alive had just rotated away "
        f"(stored one differs: {handed.oauth2.refresh_token != stored.oauth2.refresh_token}); "
        f"the holder's own refresh answered {outcome!r}, Garmin counted "
        f"{accounts.reuses(USER)} reuse(s)"
    )


def test_a_grant_of_the_access_token_alone_does_not_wait_for_a_refresh_in_flight(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
) -> None:
    """A `worker` holder gets the access token only, which the rotation leaves valid: its
    grant must not wait on another replica's claim. (A claim left by a replica killed inside
    Garmin lives for minutes; before, every grant of that user waited up to the Garmin call's
    worst case + 10 s.)"""
    seeded = accounts.seed(USER, refresh_in=timedelta(days=3))
    hold = 1.5
    timings: list[float] = []
    grants: list[LeaseGrant] = []

    def grant_elsewhere() -> None:
        started = time.monotonic()
        grant = replicas[1].leases.lease_session(USER, "worker", None, with_refresh_token=False)
        timings.append(time.monotonic() - started)
        grants.append(grant)

    with during_next_refresh(emulator, grant_elsewhere, hold=hold):
        report = replicas[0].keepalive.run_once()

    assert report.refreshed == 1
    assert timings
    assert timings[0] < hold / 3, f"the grant waited {timings[0]:.2f} s"
    handed = grants[0].tokens.oauth2.access_token
    assert handed == seeded.oauth2.access_token
    # Still good at Garmin after the rotation, and the only refresh was keep-alive's.
    upstream.validate(grants[0].tokens, allow_refresh=False)
    assert accounts.refreshes(USER) == 1
    assert accounts.reuses(USER) == 0
