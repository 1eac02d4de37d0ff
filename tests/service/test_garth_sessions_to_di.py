"""Finding the garth sessions to move to DI: ListSessions' kind filter (alone, with a state,
across pages, its page tokens) and its refusal of an unknown kind, through a real replica on
SQLite and PostgreSQL; and the user's DI sign-in replacing the garth session."""

from __future__ import annotations

import functools
from typing import cast

import grpc
import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.reliability import fake_tokens
from tests.service.test_login import PASSWORD, login
from tests.service.test_status_import_delete import import_tokens

pytestmark = pytest.mark.timeout(90)

# Garth and DI users alternate in user_id order, so every page of one kind skips the other's.
GARTH_USERS = ["u-01", "u-03", "u-05", "u-07", "u-09"]
DI_USERS = ["u-02", "u-04", "u-06"]
GARTH = pb.SESSION_KIND_GARTH
DI = pb.SESSION_KIND_DI_OAUTH2
ACTIVE = pb.SESSION_STATE_ACTIVE


@pytest.fixture
def replica(service_factory: ServiceFactory) -> Replica:
    """Logins take the DI flow (the product default)."""
    return service_factory.start(login_flow=LoginFlow.DI)


def connect_garth(replica: Replica, user_id: str) -> None:
    """A stored garth session (imported: garth's sign-in is what Garmin blocks)."""
    assert import_tokens(replica, user_id, fake_tokens(user_id)).kind == GARTH


def connect_di(replica: Replica, garmin: GarminEmulator, user_id: str) -> None:
    garmin.add_user(f"{user_id}@example.com", PASSWORD)
    assert login(replica, user_id, f"{user_id}@example.com").status.kind == DI


def populate(replica: Replica, garmin: GarminEmulator) -> None:
    """ACTIVE garth and DI sessions, and garth users in every other state."""
    for user_id in GARTH_USERS:
        connect_garth(replica, user_id)
    for user_id in DI_USERS:
        connect_di(replica, garmin, user_id)
    connect_garth(replica, "u-08")
    replica.call("DeleteSession", pb.DeleteSessionRequest(user_id="u-08"))  # NOT_CONNECTED
    connect_garth(replica, "u-10")
    lease = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="u-10", holder="w"), role="worker"
    ).lease
    replica.call(
        "ReportInvalidated",
        pb.ReportInvalidatedRequest(lease_id=lease.lease_id, reason="401"),
        role="worker",
    )  # AUTH_EXPIRED
    garmin.add_user("u-11@example.com", PASSWORD, mfa=True, mfa_code="123456")
    assert login(replica, "u-11", "u-11@example.com").outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED


def by(
    kind: pb.SessionKind = pb.SESSION_KIND_UNSPECIFIED,
    state: pb.SessionState = pb.SESSION_STATE_UNSPECIFIED,
    page_size: int = 0,
    page_token: str = "",
) -> pb.ListSessionsRequest:
    """A ListSessions request: kind first, the filter under test."""
    return pb.ListSessionsRequest(
        kind=kind, state=state, page_size=page_size, page_token=page_token
    )


def listed(replica: Replica, request: pb.ListSessionsRequest) -> list[tuple[str, int, int]]:
    """(user_id, state, kind) of every status the request lists, in one page."""
    page = replica.call("ListSessions", request, role="viewer")
    assert page.next_page_token == ""
    return [(status.user_id, status.state, status.kind) for status in page.sessions]


def test_kind_lists_the_sessions_of_that_kind_alone_or_with_a_state(
    replica: Replica, garmin: GarminEmulator
) -> None:
    populate(replica, garmin)

    assert listed(replica, by(GARTH)) == [(user, ACTIVE, GARTH) for user in GARTH_USERS]
    assert listed(replica, by(DI)) == [(user, ACTIVE, DI) for user in DI_USERS]
    assert listed(replica, by(GARTH, ACTIVE)) == listed(replica, by(GARTH))
    assert listed(replica, by(DI, ACTIVE)) == listed(replica, by(DI))
    # Only a stored session has a kind: the garth users deleted or expired have none left.
    for state in (
        pb.SESSION_STATE_NOT_CONNECTED,
        pb.SESSION_STATE_AUTH_EXPIRED,
        pb.SESSION_STATE_MFA_PENDING,
    ):
        assert listed(replica, by(GARTH, state)) == []
        assert listed(replica, by(DI, state)) == []
    # UNSPECIFIED lists every kind, as before.
    everyone = [user for user, _, _ in listed(replica, by())]
    assert everyone == sorted([*GARTH_USERS, *DI_USERS, "u-08", "u-10", "u-11"])


def test_kind_pages_across_pages_and_its_tokens_keep_to_their_filter(
    replica: Replica, garmin: GarminEmulator
) -> None:
    populate(replica, garmin)

    def pages(
        kind: pb.SessionKind, state: pb.SessionState = pb.SESSION_STATE_UNSPECIFIED
    ) -> tuple[list[list[str]], str]:
        """Pages of 2 under the filter; also the first page's token."""
        shown: list[list[str]] = []
        token = first_token = ""
        while True:
            request = by(kind, state, page_size=2, page_token=token)
            page = replica.call("ListSessions", request, role="viewer")
            shown.append([status.user_id for status in page.sessions])
            assert all(status.kind == kind for status in page.sessions)
            token = page.next_page_token
            first_token = first_token or token
            if not token:
                return shown, first_token

    garth_pages, garth_token = pages(GARTH)
    assert garth_pages == [["u-01", "u-03"], ["u-05", "u-07"], ["u-09"]]
    assert pages(GARTH, ACTIVE)[0] == garth_pages
    di_pages, di_token = pages(DI)
    assert di_pages == [["u-02", "u-04"], ["u-06"]]

    # A token is good for the filter it was issued for only, as a state's is.
    unfiltered_token = replica.call("ListSessions", by(page_size=2), role="viewer").next_page_token
    for request in [
        by(DI, page_size=2, page_token=garth_token),
        by(page_size=2, page_token=garth_token),
        by(GARTH, ACTIVE, page_size=2, page_token=garth_token),
        by(GARTH, page_size=2, page_token=di_token),
        by(GARTH, page_size=2, page_token=unfiltered_token),
    ]:
        refused = expect_failure(
            functools.partial(replica.call, "ListSessions", request, role="viewer")
        )
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert refused.field_violations == ["page_token"]


UNKNOWN_KIND = cast(pb.SessionKind, 99)
UNKNOWN_STATE = cast(pb.SessionState, 99)


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (by(UNKNOWN_KIND), ["kind"]),
        (by(UNKNOWN_KIND, ACTIVE), ["kind"]),
        # Both unknown: one violation each, as for any request with several bad fields.
        (by(cast(pb.SessionKind, -1), UNKNOWN_STATE), ["state", "kind"]),
    ],
    ids=["kind", "kind-with-a-state", "both"],
)
def test_an_unknown_kind_is_refused_as_an_unknown_state_is(
    service: Replica, request_: pb.ListSessionsRequest, fields: list[str]
) -> None:
    refused = expect_failure(lambda: service.call("ListSessions", request_, role="viewer"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert refused.field_violations == fields


def test_the_users_di_sign_in_replaces_the_garth_session(
    replica: Replica, garmin: GarminEmulator
) -> None:
    """README, Moving garth sessions to DI: the user signs in again through Login."""
    connect_garth(replica, "gus")
    before = replica.call("GetStatus", pb.GetStatusRequest(user_id="gus")).status
    lease = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="gus", holder="w"), role="worker"
    ).lease
    assert [user for user, _, _ in listed(replica, by(GARTH))] == ["gus"]

    connect_di(replica, garmin, "gus")

    after = replica.call("GetStatus", pb.GetStatusRequest(user_id="gus")).status
    assert (after.state, after.kind) == (ACTIVE, DI)
    assert after.session_version > before.session_version
    assert listed(replica, by(GARTH)) == []
    assert [user for user, _, _ in listed(replica, by(DI))] == ["gus"]
    lost = expect_failure(
        lambda: replica.call(
            "RenewLease", pb.RenewLeaseRequest(lease_id=lease.lease_id), role="worker"
        )
    )
    assert lost.reason == "LEASE_LOST"
