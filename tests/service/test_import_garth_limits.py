"""ImportSession's `garth_token` source (garth's Client.dumps()) is held to the limits of the
`session` source and ReportRefreshed (domain/validation.py check_tokens): an MFA token of
visible ASCII, a scope and jti of at most 8192 printable characters, every time within
[1970, 9999-01-01). Before, it checked only the tokens a header carries and their type, so it
stored ACTIVE what the service's own contract refuses to take back: a worker_full holder
granted such a session could not report it back (ReportRefreshed of the very session the
grant carried answered INVALID_ARGUMENT), and on PostgreSQL whose session time zone is not
UTC an expiry of 9999-12-31 (year 10000 in Tokyo) or of year 1 (year 0 in New York) could
not be read back: INTERNAL for the import, and for every later read of such a row.

Engines now pin their PostgreSQL session's time zone to UTC as well (storage/database.py),
so a row stored before this check reads back whatever time zone the server, the database or
the role names.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.database import overwrite_session_row
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.service.test_login import stored_row
from tests.storage.test_database import database_default_time_zone

pytestmark = pytest.mark.timeout(60)

YEAR_9999_END = 253402300799  # 9999-12-31T23:59:59Z
YEAR_1_START = -62135596800  # 0001-01-01T00:00:00Z


def garth_dumps(oauth1: dict[str, Any] | None = None, oauth2: dict[str, Any] | None = None) -> str:
    """A garth Client.dumps() string of a good session, with `oauth1` and `oauth2` changed."""
    now = int(time.time())
    first = {"oauth_token": "oauth1-token-limits", "oauth_token_secret": "oauth1-secret-limits"}
    second = {
        "scope": "CONNECT_READ",
        "jti": "jti-1",
        "token_type": "Bearer",
        "access_token": "access-token-limits",
        "refresh_token": "refresh-token-limits",
        "expires_in": 86400,
        "expires_at": now + 86400,
        "refresh_token_expires_in": 86400 * 30,
        "refresh_token_expires_at": now + 86400 * 30,
    }
    first.update(oauth1 or {})
    second.update(oauth2 or {})
    return base64.b64encode(json.dumps([first, second]).encode()).decode()


def _import(replica: Replica, user_id: str, dumps: str) -> pb.SessionStatus:
    request = pb.ImportSessionRequest(user_id=user_id, garth_token=dumps)
    return replica.call("ImportSession", request).status  # type: ignore[no-any-return]


def _refused(call: Callable[[], object]) -> bool:
    """Whether `call` was refused as the `session` source refuses (INVALID_ARGUMENT); any other
    failure fails the test."""
    try:
        call()
    except grpc.RpcError as refused:
        if refused.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        return True
    return False


# Each is refused by the `session` source and by ReportRefreshed; the garth_token source
# stored each ACTIVE.
BEYOND_THE_LIMITS = {
    "mfa_token-control-char": ({"mfa_token": "mfa\x01token"}, {}),
    "mfa_expiry-after-9999-01-01": ({"mfa_expiration_timestamp": "9999-06-01T00:00:00"}, {}),
    "mfa_expiry-before-1970": ({"mfa_expiration_timestamp": "1960-06-01T00:00:00"}, {}),
    "scope-nul": ({}, {"scope": "\x00"}),
    "jti-9000-characters": ({}, {"jti": "j" * 9000}),
    "access-expiry-9999-12-31": ({}, {"expires_at": YEAR_9999_END}),
    "access-expiry-year-1": ({}, {"expires_at": YEAR_1_START}),
    "refresh-expiry-9999-12-31": ({}, {"refresh_token_expires_at": YEAR_9999_END}),
}


@pytest.mark.parametrize(
    ("oauth1", "oauth2"), BEYOND_THE_LIMITS.values(), ids=BEYOND_THE_LIMITS.keys()
)
def test_garth_import_refuses_what_the_session_source_refuses(
    service: Replica, database_url: str, oauth1: dict[str, Any], oauth2: dict[str, Any]
) -> None:
    """Before: stored ACTIVE. Now: INVALID_ARGUMENT on `garth_token`, nothing stored."""
    failure = expect_failure(lambda: _import(service, "gl", garth_dumps(oauth1, oauth2)))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.field_violations == ["garth_token"]
    assert stored_row(database_url, "gl") is None


# Year 1 aside: that access token has expired, so the grant would first refresh it at Garmin.
REPORTABLE = {
    name: value for name, value in BEYOND_THE_LIMITS.items() if name != "access-expiry-year-1"
}


@pytest.mark.parametrize(("oauth1", "oauth2"), REPORTABLE.values(), ids=REPORTABLE.keys())
def test_what_a_garth_import_stores_its_worker_full_holder_can_report_back(
    service: Replica, oauth1: dict[str, Any], oauth2: dict[str, Any]
) -> None:
    """Whatever the import stores, the grant of it round-trips through ReportRefreshed (a
    holder that did not need to refresh hands back what it got). Before: the import stored
    these and ReportRefreshed of the unchanged grant answered INVALID_ARGUMENT. Now: the
    import refuses them, so no grant carries them."""
    if _refused(lambda: _import(service, "gr", garth_dumps(oauth1, oauth2))):
        return
    granted = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="gr", holder="w-1"), role="worker_full"
    )
    service.call(
        "ReportRefreshed",
        pb.ReportRefreshedRequest(lease_id=granted.lease.lease_id, session=granted.session),
        role="worker_full",
    )


# --- PostgreSQL whose time zone is not UTC -------------------------------------------------

# Instants at the ends of the year range, and a time zone that moves each past it.
FAR_TIMES = {
    "9999-12-31-in-Tokyo": ("Asia/Tokyo", YEAR_9999_END),
    "year-1-in-New-York": ("America/New_York", YEAR_1_START),
}


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("time_zone", "expires_at"), FAR_TIMES.values(), ids=FAR_TIMES.keys())
def test_garth_import_of_a_far_expiry_on_a_non_utc_database_is_invalid_and_changes_nothing(
    service_factory: ServiceFactory, database_url: str, time_zone: str, expires_at: int
) -> None:
    """Before: INTERNAL (psycopg DataError "timestamp too large (after year 10K)" / "too small
    (before year 1)" reading the row back after the UPDATE). Now: INVALID_ARGUMENT, and the
    session imported before stays as it was."""
    with database_default_time_zone(database_url, time_zone):
        replica = service_factory.start()
        before = _import(replica, "tz", garth_dumps())

        failure = expect_failure(
            lambda: _import(replica, "tz", garth_dumps(oauth2={"expires_at": expires_at}))
        )

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    after = replica.call("GetStatus", pb.GetStatusRequest(user_id="tz")).status
    assert after.session_version == before.session_version


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("time_zone", "expires_at"), FAR_TIMES.values(), ids=FAR_TIMES.keys())
def test_a_stored_far_time_reads_on_a_database_whose_time_zone_is_not_utc(
    service_factory: ServiceFactory, database_url: str, time_zone: str, expires_at: int
) -> None:
    """Before: once the database's time zone (or its role's, or the server's) was another
    than UTC, a replica answered INTERNAL to GetStatus of that user and to every ListSessions
    page holding the row. Now: its connections read in UTC, whatever the database says."""
    far = datetime.fromtimestamp(expires_at, UTC)
    first = service_factory.start()
    _import(first, "ok-user", garth_dumps())
    _import(first, "far-user", garth_dumps())
    # What the garth import stored before it was checked (a row of an older release).
    overwrite_session_row(database_url, "far-user", access_token_expires_at=far)

    with database_default_time_zone(database_url, time_zone):
        elsewhere = service_factory.start()
        page = elsewhere.call("ListSessions", pb.ListSessionsRequest())
        status = elsewhere.call("GetStatus", pb.GetStatusRequest(user_id="far-user")).status

    assert {listed.user_id for listed in page.sessions} == {"ok-user", "far-user"}
    assert status.access_token_expires_at.ToDatetime(tzinfo=UTC) == far
