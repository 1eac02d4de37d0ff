"""GetStatus (with and without validation), ImportSession, DeleteSession and ListSessions."""

from __future__ import annotations

import base64
import functools
import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

import garth
import grpc
import pytest

from auth_service.domain.models import GarminTokens, LoginSucceeded
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.session_proto import tokens_to_proto
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica, expect_failure
from tests.service.test_login import PASSWORD, login, stored_row


def garmin_tokens(service: Replica, garmin: GarminEmulator, email: str) -> GarminTokens:
    """Tokens Garmin issued for `email`, obtained outside the service (as a user's own garth)."""
    garmin.add_user(email, PASSWORD)
    result = GarthUpstream(service.running.application.settings.upstream).login(email, PASSWORD)
    assert isinstance(result, LoginSucceeded)
    return result.tokens


def import_tokens(service: Replica, user_id: str, tokens: GarminTokens) -> pb.SessionStatus:
    request = pb.ImportSessionRequest(user_id=user_id, session=tokens_to_proto(tokens))
    return cast(pb.SessionStatus, service.call("ImportSession", request).status)


def test_status_of_unknown_user_is_not_connected(service: Replica) -> None:
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="nobody")).status
    assert status.user_id == "nobody"
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    assert not status.HasField("lease")


def test_status_without_validate_makes_no_garmin_call(
    service: Replica, garmin: GarminEmulator
) -> None:
    garmin.add_user("amy@example.com", PASSWORD)
    login(service, "amy", "amy@example.com")
    before = garmin.request_count("/")
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="amy")).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert status.HasField("access_token_expires_at")
    assert garmin.request_count("/") == before


def test_validate_good_session_updates_last_validated(
    service: Replica, garmin: GarminEmulator
) -> None:
    tokens = garmin_tokens(service, garmin, "ben@example.com")
    imported = import_tokens(service, "ben", tokens)
    assert not imported.HasField("last_validated_at")
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="ben", validate=True)).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert status.HasField("last_validated_at")
    assert status.session_version == imported.session_version  # nothing was refreshed
    assert garmin.exchange_count("ben@example.com") == 1  # only the login's own exchange


def test_validate_refreshes_an_expired_token_and_stores_it(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    tokens = garmin_tokens(service, garmin, "cal@example.com")
    stale = replace(
        tokens,
        oauth2=replace(tokens.oauth2, expires_at=datetime.now(UTC) - timedelta(minutes=5)),
    )
    imported = import_tokens(service, "cal", stale)
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="cal", validate=True)).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert status.session_version == imported.session_version + 1
    assert status.access_token_expires_at.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
    assert garmin.exchange_count("cal@example.com") == 2  # login + this refresh
    row = stored_row(database_url, "cal")
    assert row is not None
    assert row.access_token_expires_at is not None
    assert row.access_token_expires_at > datetime.now(UTC)


def test_validate_revoked_session_ends_auth_expired_with_secrets_wiped(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    import_tokens(service, "dee", garmin_tokens(service, garmin, "dee@example.com"))
    garmin.revoke_tokens("dee@example.com")
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="dee", validate=True)).status
    assert status.state == pb.SESSION_STATE_AUTH_EXPIRED
    assert status.invalidated_reason
    assert status.HasField("invalidated_at")
    row = stored_row(database_url, "dee")
    assert row is not None
    assert row.session_ciphertext is None
    refused = expect_failure(
        lambda: service.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id="dee", holder="w"), role="worker"
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_ACTIVE",
    )


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED, "GARMIN_RATE_LIMITED"),
        (500, grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE"),
        (503, grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE"),
    ],
)
def test_validate_during_garmin_trouble_changes_nothing(
    service: Replica,
    garmin: GarminEmulator,
    fault: int,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    import_tokens(service, "eli", garmin_tokens(service, garmin, "eli@example.com"))
    before = service.call("GetStatus", pb.GetStatusRequest(user_id="eli")).status
    garmin.fail_next("/userprofile-service/", fault, count=5)
    failure = expect_failure(
        lambda: service.call("GetStatus", pb.GetStatusRequest(user_id="eli", validate=True))
    )
    assert (failure.code, failure.reason) == (code, reason)
    after = service.call("GetStatus", pb.GetStatusRequest(user_id="eli")).status
    assert after == before


def test_validate_does_not_refresh_behind_a_lease_holder(
    service: Replica, garmin: GarminEmulator
) -> None:
    tokens = garmin_tokens(service, garmin, "fox@example.com")
    # Expires in 2 minutes: the lease hands it out as is (no central refresh needed) ...
    expiring = replace(
        tokens, oauth2=replace(tokens.oauth2, expires_at=datetime.now(UTC) + timedelta(minutes=2))
    )
    import_tokens(service, "fox", expiring)
    service.call(
        "LeaseSession",
        pb.LeaseSessionRequest(user_id="fox", holder="w-1"),
        role="worker",
    )
    exchanges = garmin.exchange_count("fox@example.com")
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="fox", validate=True)).status
    assert status.HasField("last_validated_at")
    assert garmin.exchange_count("fox@example.com") == exchanges


def test_validate_never_ends_a_leased_session_on_a_refused_stored_token(
    service: Replica, garmin: GarminEmulator
) -> None:
    """A 401 to a stored access token that is not fresh is no verdict on the session, and
    while a lease holds it the refresh that would give one is the holder's (before: the
    session ended AUTH_EXPIRED under its holder, with a refresh token Garmin still took)."""
    import_tokens(service, "gus", garmin_tokens(service, garmin, "gus@example.com"))
    grant = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="gus", holder="w-1"), role="worker"
    )
    garmin.expire_access_tokens("gus@example.com")

    refused = expect_failure(
        lambda: service.call("GetStatus", pb.GetStatusRequest(user_id="gus", validate=True))
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.ABORTED, "LEASE_HELD")
    after = service.call("GetStatus", pb.GetStatusRequest(user_id="gus")).status
    assert after.state == pb.SESSION_STATE_ACTIVE
    assert after.invalidated_reason == ""
    # The holder meets the same 401 and asks for a refresh: the session was alive all along.
    refreshed = service.call(
        "RefreshLease",
        pb.RefreshLeaseRequest(
            lease_id=grant.lease.lease_id, session_version=grant.status.session_version
        ),
        role="worker",
    )
    assert refreshed.status.state == pb.SESSION_STATE_ACTIVE
    assert refreshed.status.session_version > grant.status.session_version


def test_import_from_a_real_garth_dumps_string(service: Replica, garmin: GarminEmulator) -> None:
    garmin.add_user("gil@example.com", PASSWORD)
    oauth1, oauth2 = _garth_tokens(service, "gil@example.com")
    client = garth.Client()
    client.configure(domain="garmin.com", oauth1_token=oauth1, oauth2_token=oauth2)
    dumped = client.dumps()
    status = service.call(
        "ImportSession", pb.ImportSessionRequest(user_id="gil", garth_token=dumped)
    ).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    grant = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="gil", holder="w"), role="worker_full"
    )
    dumped_oauth1, dumped_oauth2 = json.loads(base64.b64decode(dumped))
    assert grant.session.oauth1.oauth_token == dumped_oauth1["oauth_token"]
    assert grant.session.oauth2.access_token == dumped_oauth2["access_token"]
    validated = service.call("GetStatus", pb.GetStatusRequest(user_id="gil", validate=True))
    assert validated.status.state == pb.SESSION_STATE_ACTIVE


def _garth_tokens(
    service: Replica, email: str
) -> tuple[garth.auth_tokens.OAuth1Token, garth.auth_tokens.OAuth2Token]:
    """A user's own garth session, as garth itself builds it."""
    tokens = GarthUpstream(service.running.application.settings.upstream).login(email, PASSWORD)
    assert isinstance(tokens, LoginSucceeded)
    o1, o2 = tokens.tokens.oauth1_token(), tokens.tokens.oauth2
    assert o2.refresh_token_expires_at is not None
    now = int(datetime.now(UTC).timestamp())
    return (
        garth.auth_tokens.OAuth1Token(
            oauth_token=o1.oauth_token,
            oauth_token_secret=o1.oauth_token_secret,
            domain="garmin.com",
        ),
        garth.auth_tokens.OAuth2Token(
            scope=o2.scope,
            jti=o2.jti,
            token_type=o2.token_type,
            access_token=o2.access_token,
            refresh_token=o2.refresh_token,
            expires_in=int(o2.expires_at.timestamp()) - now,
            expires_at=int(o2.expires_at.timestamp()),
            refresh_token_expires_in=int(o2.refresh_token_expires_at.timestamp()) - now,
            refresh_token_expires_at=int(o2.refresh_token_expires_at.timestamp()),
        ),
    )


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.ImportSessionRequest(user_id="x"), ["source"]),
        (pb.ImportSessionRequest(user_id="x", garth_token="not base64 at all!"), ["garth_token"]),
        (
            pb.ImportSessionRequest(
                user_id="x", garth_token=base64.b64encode(b'[{"a": 1}, {}]').decode()
            ),
            ["garth_token"],
        ),
        (
            pb.ImportSessionRequest(user_id="x", session=pb.GarminSession()),
            ["session.oauth1", "session.oauth2"],
        ),
        (
            pb.ImportSessionRequest(user_id="bad id!", garth_token="x"),
            ["user_id", "garth_token"],
        ),
    ],
)
def test_import_rejects_malformed_tokens(
    service: Replica, request_: pb.ImportSessionRequest, fields: list[str]
) -> None:
    failure = expect_failure(lambda: service.call("ImportSession", request_))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_ARGUMENT"
    assert failure.field_violations == fields


def test_delete_forgets_session_challenge_and_lease(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    import_tokens(service, "hob", garmin_tokens(service, garmin, "hob@example.com"))
    lease = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="hob", holder="w"), role="worker"
    ).lease
    service.call("DeleteSession", pb.DeleteSessionRequest(user_id="hob"))
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="hob")).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    assert not status.HasField("lease")
    row = stored_row(database_url, "hob")
    assert row is not None
    assert row.session_ciphertext is None
    lost = expect_failure(
        lambda: service.call(
            "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease.lease_id), role="worker"
        )
    )
    assert lost.reason == "LEASE_LOST"
    # Reconnecting continues the fencing sequence.
    import_tokens(service, "hob", garmin_tokens(service, garmin, "hob2@example.com"))
    again = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="hob", holder="w"), role="worker"
    ).lease
    assert again.fencing_token > lease.fencing_token
    # Deleting an unknown user is not an error (idempotent).
    service.call("DeleteSession", pb.DeleteSessionRequest(user_id="never-seen"))


def test_list_sessions_pages_filters_and_stays_stable_under_inserts(
    service: Replica, garmin: GarminEmulator
) -> None:
    tokens = garmin_tokens(service, garmin, "ivy@example.com")
    for index in range(25):
        import_tokens(service, f"user-{index:02d}", tokens)
    service.call("DeleteSession", pb.DeleteSessionRequest(user_id="user-03"))

    seen: list[str] = []
    token = ""
    inserter_done = threading.Event()

    def insert_more() -> None:
        for index in range(10):
            import_tokens(service, f"aaa-{index}", tokens)  # sorts before every page
        inserter_done.set()

    inserter = threading.Thread(target=insert_more)
    page = service.call(
        "ListSessions",
        pb.ListSessionsRequest(page_size=10, state=pb.SESSION_STATE_ACTIVE),
        role="viewer",
    )
    inserter.start()
    while True:
        seen.extend(status.user_id for status in page.sessions)
        for status in page.sessions:
            assert status.state == pb.SESSION_STATE_ACTIVE
        token = page.next_page_token
        if not token:
            break
        page = service.call(
            "ListSessions",
            pb.ListSessionsRequest(page_size=10, page_token=token, state=pb.SESSION_STATE_ACTIVE),
            role="viewer",
        )
    inserter.join()
    expected = [f"user-{index:02d}" for index in range(25) if index != 3]
    assert [user for user in seen if user.startswith("user-")] == expected
    assert len(seen) == len(set(seen))


def test_list_sessions_rejects_foreign_page_tokens(service: Replica) -> None:
    bad = expect_failure(
        lambda: service.call(
            "ListSessions", pb.ListSessionsRequest(page_token="garbage"), role="viewer"
        )
    )
    assert (bad.code, bad.field_violations) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])
    too_big = expect_failure(
        lambda: service.call("ListSessions", pb.ListSessionsRequest(page_size=5000), role="viewer")
    )
    assert too_big.field_violations == ["page_size"]


def test_validate_of_a_user_never_connected_is_session_not_active(
    service: Replica, garmin: GarminEmulator
) -> None:
    """README, Errors: SESSION_NOT_ACTIVE "for GetStatus(validate) also not connected". A
    deleted session answered it; a user who never connected answered OK NOT_CONNECTED."""
    garmin.add_user("gone@example.com", "pw-gone")
    service.call(
        "Login", pb.LoginRequest(user_id="gone", email="gone@example.com", password="pw-gone")
    )
    service.call("DeleteSession", pb.DeleteSessionRequest(user_id="gone"))
    answers = []
    for user_id in ("gone", "never"):
        request = pb.GetStatusRequest(user_id=user_id, validate=True)
        failure = expect_failure(functools.partial(service.call, "GetStatus", request))
        answers.append((failure.code, failure.reason))

    assert answers == [(grpc.StatusCode.FAILED_PRECONDITION, "SESSION_NOT_ACTIVE")] * 2
    plain = service.call("GetStatus", pb.GetStatusRequest(user_id="never")).status
    assert plain.state == pb.SESSION_STATE_NOT_CONNECTED
