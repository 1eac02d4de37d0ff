"""RefreshLease with session_version 0 ("0 when unknown") refreshes with Garmin. Before, after
Garmin refused the holder's token, the service answered that very token without a refresh
(every stored version is above 0, so "the stored session moved past yours" always held), and
the README calls a 401 on a token RefreshLease just handed out a definite rejection
(ReportInvalidated): a good session was wiped. Real gRPC, the emulator over real HTTP."""

from __future__ import annotations

import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.connect_api import ConnectApi
from garmin_client.errors import AccessTokenRejected
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.worker import connect, upstream

pytestmark = pytest.mark.timeout(120)


def test_refresh_lease_with_unknown_version_hands_out_a_token_garmin_accepts(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start()
    email = connect(replica, garmin, "rl-unknown")
    granted = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rl-unknown", holder="w"), role="worker"
    )
    # Garmin stops accepting the access token early (the session itself is fine: the
    # OAuth1 token still exchanges).
    garmin.expire_access_tokens(email)
    with ConnectApi(upstream(garmin), "garmin.com") as api:
        with pytest.raises(AccessTokenRejected):
            api.get_json("/userprofile-service/socialProfile", granted.access.token)

        # The holder does not know its version: the proto's "0 when unknown".
        fresh = replica.call(
            "RefreshLease",
            pb.RefreshLeaseRequest(lease_id=granted.lease.lease_id, session_version=0),
            role="worker",
        )

        # README step 4: a 401 on this token would be "a definite rejection".
        same_token = fresh.access.token == granted.access.token
        assert not same_token, (
            "RefreshLease(session_version=0) answered the token Garmin had just refused"
        )
        api.get_json("/userprofile-service/socialProfile", fresh.access.token)
