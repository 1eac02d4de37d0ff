"""ReportRefreshed stores only what can go on refreshing where the service will refresh it.

Three holes a worker_full holder's report went through (found by review, each ending a live
session at the service's next refresh):
- a refresh token the row's own rotations had replaced (dead at Garmin: invalid_grant) was
  stored, when reported with the version the holder's current grant carries;
- a DI session reported under another domain (or with none, read as garmin.com) was stored
  there, and its next refresh went to the other Garmin's diauth (a garmin.cn account's refresh
  token refreshes only at diauth.garmin.cn);
- a report echoing the pair it was given recorded the live refresh token as rotated away.
And the same domain rule for a session given field by field: a DI access token names its
issuer (`iss`), which the domain must match.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.api import convert
from auth_service.domain.errors import InvalidArgument
from auth_service.domain.models import GarminTokens, OAuth2Token, SessionState
from auth_service.domain.views import rotated_away
from auth_service.upstream.router import UpstreamRouter
from garmin_client import session_proto
from garmin_emulator import KNOWN_DI_CLIENT_IDS, GarminEmulator
from tests.leases import read_row
from tests.refresh import ASKER, DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)

USER = "report-guard"
EMAIL = f"{USER}@example.com"


def _fields(refused: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [violation.field for violation in refused.value.violations]


def test_a_report_of_a_rotated_away_refresh_token_is_refused_and_changes_nothing(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    first = accounts.seed(USER)
    # A worker_full holder keeps its copy of the session from one lease to the next.
    lease1 = replicas[0].leases.lease_session(USER, "legacy-worker", None, with_refresh_token=True)
    assert lease1.tokens == first
    replicas[0].leases.release_lease(lease1.lease.lease_id, None)
    # The service rotates the session meanwhile (keep-alive, a validating GetStatus).
    replicas[1].refresher.refresh(USER, read_row(db_sessionmaker, USER).session_version, ASKER)
    assert first.oauth2.refresh_token not in emulator.live_refresh_tokens(EMAIL)
    lease2 = replicas[0].leases.lease_session(USER, "legacy-worker", None, with_refresh_token=True)
    before = read_row(db_sessionmaker, USER)

    # The holder reports last run's copy with this grant's version.
    with pytest.raises(InvalidArgument) as refused:
        replicas[0].leases.report_refreshed(
            lease2.lease.lease_id, first, session_version=lease2.status.session_version
        )
    assert _fields(refused) == ["session.oauth2.refresh_token"]
    assert read_row(db_sessionmaker, USER).session_version == before.session_version

    # The session goes on refreshing.
    replicas[0].leases.release_lease(lease2.lease.lease_id, None)
    replicas[1].refresher.refresh(USER, before.session_version, ASKER)
    assert read_row(db_sessionmaker, USER).state is SessionState.ACTIVE


def test_a_copy_from_more_rotations_back_than_the_row_keeps_is_refused(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    """Found by review of the first fix: the row keeps digests of its latest rotations only
    (views.ROTATIONS_KEPT); a copy from five rotations back passed. Its access token was
    issued before the stored one: refused on that."""
    accounts.seed(USER)
    replicas[1].refresher.refresh(USER, read_row(db_sessionmaker, USER).session_version, ASKER)
    lease1 = replicas[0].leases.lease_session(USER, "legacy-worker", None, with_refresh_token=True)
    # Kept since then: rotations are hours apart (the emulator's clock is real time, so the
    # copy's issue time is moved back rather than the test waiting for it).
    copy = _issued_earlier(lease1.tokens, 3600)
    replicas[0].leases.release_lease(lease1.lease.lease_id, None)
    for _ in range(5):  # keep-alive and other holders rotate the session meanwhile
        replicas[1].refresher.refresh(USER, read_row(db_sessionmaker, USER).session_version, ASKER)
    assert copy.oauth2.refresh_token not in emulator.live_refresh_tokens(EMAIL)
    assert not rotated_away(read_row(db_sessionmaker, USER), copy.oauth2.refresh_token)
    lease2 = replicas[0].leases.lease_session(USER, "legacy-worker", None, with_refresh_token=True)

    with pytest.raises(InvalidArgument) as refused:
        replicas[0].leases.report_refreshed(
            lease2.lease.lease_id, copy, session_version=lease2.status.session_version
        )
    assert _fields(refused) == ["session.oauth2.refresh_token"]
    assert read_row(db_sessionmaker, USER).state is SessionState.ACTIVE


def test_a_holders_refresh_stamped_by_a_slower_garmin_clock_is_stored(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    """Found by review: Garmin's diauth hosts may disagree on the time by a little, and
    refusing a holder's real refresh loses the session (it killed the stored refresh token)."""
    accounts.seed(USER)
    grant = replicas[0].leases.lease_session(USER, "worker-1", None, with_refresh_token=True)
    own = _issued_earlier(upstream.refresh(grant.tokens), 60)
    replicas[0].leases.report_refreshed(
        grant.lease.lease_id, own, session_version=grant.status.session_version
    )
    assert read_row(db_sessionmaker, USER).session_version > grant.status.session_version


def _issued_earlier(tokens: GarminTokens, seconds: int) -> GarminTokens:
    """`tokens` with an access token whose JWT says it was issued `seconds` earlier (the
    service reads the payload; the signature is Garmin's to check)."""
    header, body, signature = tokens.oauth2.access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["iat"] -= seconds
    moved = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    oauth2 = dataclasses.replace(tokens.oauth2, access_token=f"{header}.{moved}.{signature}")
    return dataclasses.replace(tokens, oauth2=oauth2)


def test_a_report_under_another_domain_is_refused(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed(USER)
    grant = replicas[0].leases.lease_session(USER, "worker-1", None, with_refresh_token=True)
    own = upstream.refresh(grant.tokens)  # the holder's own refresh, at diauth.garmin.com
    moved = dataclasses.replace(own, domain="garmin.cn")

    with pytest.raises(InvalidArgument) as refused:
        replicas[0].leases.report_refreshed(
            grant.lease.lease_id, moved, session_version=grant.status.session_version
        )
    assert _fields(refused) == ["session.domain"]
    assert read_row(db_sessionmaker, USER).session_version == grant.status.session_version
    # The holder's report with the right domain is stored.
    replicas[0].leases.report_refreshed(
        grant.lease.lease_id, own, session_version=grant.status.session_version
    )
    assert emulator.token_requests[-1].host == "diauth.garmin.com"


def test_a_garmin_cn_session_reported_without_a_domain_is_refused(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    emulator: GarminEmulator,
    upstream: UpstreamRouter,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    accounts.seed(USER, domain="garmin.cn")  # a pair diauth.garmin.cn issued
    grant = replicas[0].leases.lease_session(USER, "worker-1", None, with_refresh_token=True)
    own = upstream.refresh(grant.tokens)
    assert emulator.token_requests[-1].host == "diauth.garmin.cn"
    message = session_proto.tokens_to_proto(own)
    message.domain = ""  # what a worker that never sets the field sends

    # The wire refuses it first: the access token names diauth.garmin.cn as its issuer.
    with pytest.raises(InvalidArgument) as refused:
        convert.tokens_from_proto(message, "session")
    assert _fields(refused) == ["session.domain"]
    # Read as garmin.com (as a token naming no issuer would be), the lease service refuses it.
    with pytest.raises(InvalidArgument) as refused:
        replicas[0].leases.report_refreshed(
            grant.lease.lease_id,
            dataclasses.replace(own, domain="garmin.com"),
            session_version=grant.status.session_version,
        )
    assert _fields(refused) == ["session.domain"]
    assert read_row(db_sessionmaker, USER).session_version == grant.status.session_version


def test_a_report_echoing_the_pair_it_was_given_keeps_the_live_token_out_of_the_history(
    replicas: tuple[Replica, Replica],
    accounts: DiAccounts,
    db_sessionmaker: sessionmaker[Session],
) -> None:
    seeded = accounts.seed(USER)
    grant = replicas[0].leases.lease_session(USER, "worker-1", None, with_refresh_token=True)
    replicas[0].leases.report_refreshed(
        grant.lease.lease_id, grant.tokens, session_version=grant.status.session_version
    )
    row = read_row(db_sessionmaker, USER)
    assert row.session_version > grant.status.session_version  # stored
    assert not rotated_away(row, seeded.oauth2.refresh_token), (
        "the row records its live refresh token as rotated away"
    )


def _jwt(payload: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("issuer", "domain", "refused"),
    [
        ("https://diauth.garmin.cn", "", True),
        ("https://diauth.garmin.cn", "garmin.com", True),
        ("https://diauth.garmin.com", "garmin.cn", True),
        ("https://diauth.garmin.cn", "garmin.cn", False),
        ("https://diauth.garmin.com", "", False),
        (None, "garmin.cn", False),  # a token that names no issuer: the caller's word
    ],
)
def test_a_di_session_given_field_by_field_names_its_issuers_domain(
    issuer: str | None, domain: str, refused: bool
) -> None:
    client_id = KNOWN_DI_CLIENT_IDS[0]
    claims: dict[str, object] = {"exp": 2_000_000_000, "client_id": client_id}
    if issuer is not None:
        claims["iss"] = issuer
    tokens = GarminTokens(
        oauth1=None,
        oauth2=OAuth2Token(
            scope="",
            jti="",
            token_type="bearer",
            access_token=_jwt(claims),
            refresh_token="refresh-" + "r" * 40,
            expires_at=datetime.fromtimestamp(2_000_000_000, UTC),
            refresh_token_expires_at=None,
        ),
        domain="garmin.com",
        di_client_id=client_id,
    )
    message = session_proto.tokens_to_proto(tokens)
    message.domain = domain
    if refused:
        with pytest.raises(InvalidArgument) as error:
            convert.tokens_from_proto(message, "session")
        assert _fields(error) == ["session.domain"]
    else:
        assert convert.tokens_from_proto(message, "session").domain == (domain or "garmin.com")
