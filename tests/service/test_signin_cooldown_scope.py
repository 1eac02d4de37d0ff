"""GARMIN_RATE_LIMITED carries ErrorInfo metadata `scope: user` when it is the account's own
cooldown (README, Errors), the account's sign-in cooldown included: other accounts may go on
signing in. Before, a Login refused by the sign-in cooldown answered without it, which a
client is told to read as Garmin's word on every account (a backend signing many users in
would stop them all). (From a review of b8f7f61.)"""

from __future__ import annotations

from typing import cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from auth_service.domain.policies import LoginFlow
from garmin_emulator import BLOCK_RATE_LIMITED, LOGIN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.service.test_login import login

pytestmark = pytest.mark.timeout(60)

USER, EMAIL = "rae", "rae@example.com"


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def test_a_login_refused_by_the_accounts_sign_in_cooldown_is_scoped_to_the_user(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user(EMAIL, "correct horse battery staple")
    garmin.block_logins(BLOCK_RATE_LIMITED, retry_after=60)
    with pytest.raises(grpc.RpcError):
        login(replica, USER, EMAIL)  # Garmin's own 429: its sign-in cooldown starts

    before = garmin.request_count(LOGIN_PATH)
    with pytest.raises(grpc.RpcError) as raised:
        login(replica, USER, EMAIL)
    assert garmin.request_count(LOGIN_PATH) == before  # answered for Garmin: the cooldown
    info = _error_info(raised.value)
    assert info.reason == "GARMIN_RATE_LIMITED"
    assert dict(info.metadata) == {"scope": "user"}, dict(info.metadata)
