"""ReportRefreshed of another Garmin account's DI session is refused (README, Errors: "a
ReportRefreshed session of another account" is INVALID_ARGUMENT), and nothing is stored.

Every DI session issued through one app client shares its client id, which was all the check
compared: a worker_full holder of ann's lease could store bob's session in ann's row (ann's
syncs then read bob's data), and with bob's rotating refresh token in two rows, the first
refresh of ann's row ended bob's session. The account is the access token's garminGuid claim
(auth_service.domain.jwt_payload.di_account). Real gRPC replica, emulator over HTTP, both
databases.
"""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from auth_service.crypto import Keyring
from auth_service.domain.errors import InvalidArgument
from auth_service.domain.models import GarminTokens, OAuth2Token
from auth_service.services.lease_holders import check_same_account
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.servers import Replica, ServiceFactory, failure_of
from tests.refresh import DiAccounts
from tests.worker import stored_tokens

pytestmark = pytest.mark.timeout(60)


def _ann_and_bob_leased(
    service_factory: ServiceFactory, di_accounts: DiAccounts
) -> tuple[Replica, pb.LeaseSessionResponse, pb.LeaseSessionResponse]:
    """A replica, and two DI accounts' sessions leased by one worker_full caller."""
    replica = service_factory.start(provider=both_providers(service_factory.base_settings.upstream))
    di_accounts.seed("ann")
    di_accounts.seed("bob")

    def lease(user_id: str) -> pb.LeaseSessionResponse:
        request = pb.LeaseSessionRequest(user_id=user_id, holder="legacy")
        answer: pb.LeaseSessionResponse = replica.call("LeaseSession", request, "worker_full")
        return answer

    return replica, lease("ann"), lease("bob")


def test_a_di_report_of_another_accounts_session_is_refused(
    service_factory: ServiceFactory, di_accounts: DiAccounts, database_url: str, keyring: Keyring
) -> None:
    replica, anns, bobs = _ann_and_bob_leased(service_factory, di_accounts)
    assert anns.session.di_client_id == bobs.session.di_client_id  # one app client for all
    assert anns.status.session_version == bobs.status.session_version
    before = stored_tokens(database_url, keyring, "ann")
    assert before is not None

    # A legacy worker mixes up its threads: bob's session reported on ann's lease.
    request = pb.ReportRefreshedRequest(
        lease_id=anns.lease.lease_id,
        session=bobs.session,
        session_version=anns.status.session_version,
    )
    try:
        replica.call("ReportRefreshed", request, "worker_full")
        refused = None
    except grpc.RpcError as error:
        refused = failure_of(error)

    after = stored_tokens(database_url, keyring, "ann")
    assert after is not None
    holds_bobs = after.oauth2.refresh_token == bobs.session.oauth2.refresh_token
    assert refused is not None, (
        "ReportRefreshed of bob's DI session on ann's lease answered OK; ann's row now holds "
        f"bob's refresh token: {holds_bobs}"
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert after.oauth2.refresh_token == before.oauth2.refresh_token


def test_a_report_on_the_wrong_lease_does_not_end_the_other_accounts_session(
    service_factory: ServiceFactory, di_accounts: DiAccounts
) -> None:
    """What an accepted report cost: both rows held bob's rotating refresh token, so the
    first refresh of ann's row (RefreshLease) killed the token bob's row holds, and bob's next
    refresh met invalid_grant: bob's session ended AUTH_EXPIRED, a person had to log in."""
    replica, anns, bobs = _ann_and_bob_leased(service_factory, di_accounts)
    version = anns.status.session_version
    report = pb.ReportRefreshedRequest(
        lease_id=anns.lease.lease_id, session=bobs.session, session_version=version
    )
    # Refused, as it should be: then nothing below can go wrong.
    with contextlib.suppress(grpc.RpcError):
        replica.call("ReportRefreshed", report, "worker_full")
    ann_refresh = pb.RefreshLeaseRequest(lease_id=anns.lease.lease_id, session_version=0)
    replica.call("RefreshLease", ann_refresh, "worker_full")
    bob_refresh = pb.RefreshLeaseRequest(
        lease_id=bobs.lease.lease_id, session_version=bobs.status.session_version
    )
    with contextlib.suppress(grpc.RpcError):
        replica.call("RefreshLease", bob_refresh, "worker_full")
    status = replica.call("GetStatus", pb.GetStatusRequest(user_id="bob")).status
    assert status.state == pb.SESSION_STATE_ACTIVE, (
        f"bob's session ended: {pb.SessionState.Name(status.state)} ({status.invalidated_reason})"
    )


def _di(access_claims: dict[str, object], client_id: str = "APP") -> GarminTokens:
    payload = base64.urlsafe_b64encode(json.dumps(access_claims).encode()).rstrip(b"=").decode()
    now = datetime.now(UTC)
    return GarminTokens(
        oauth1=None,
        oauth2=OAuth2Token(
            scope="CONNECT_READ",
            jti="j",
            token_type="bearer",
            access_token=f"e30.{payload}.sig",
            refresh_token="r",
            expires_at=now + timedelta(hours=1),
            refresh_token_expires_at=now + timedelta(days=30),
        ),
        di_client_id=client_id,
    )


@pytest.mark.parametrize(
    ("stored", "reported", "refused"),
    [
        ({"garminGuid": "g-ann"}, {"garminGuid": "g-bob"}, True),
        ({"garminGuid": "g-ann"}, {"garminGuid": "g-ann"}, False),
        # A token that names no account cannot tell: the client id decides, as before.
        ({"garminGuid": "g-ann"}, {}, False),
        ({}, {"garminGuid": "g-bob"}, False),
        ({"garminGuid": 7}, {"garminGuid": "g-bob"}, False),
    ],
)
def test_the_account_is_the_access_tokens_garmin_guid(
    stored: dict[str, object], reported: dict[str, object], refused: bool
) -> None:
    fields = None
    try:
        check_same_account(_di(stored), _di(reported))
    except InvalidArgument as error:
        fields = [violation.field for violation in error.violations]
    assert fields == (["session"] if refused else None)
