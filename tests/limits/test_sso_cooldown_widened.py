"""A short 429 from the token endpoint, met while the account waits out a long 429 from Garmin's
sign-in (SSO), holds back every call of the account for the token endpoint's Retry-After only;
sign-ins keep the SSO's. Before, the sign-in's long wait became one that held back every call:
the ticket exchange (the documented way in while Garmin refuses our sign-ins) and the session's
refreshes were refused for the SSO's whole Retry-After.

README, "How we treat Garmin's limits": "After a 429, that account is not sent to Garmin again,
for any call, until Garmin's Retry-After has passed" ... "A 429 from the sign-in itself (SSO)
holds back the account's sign-ins and MFA codes only: its refreshes, validations and, above
all, the exchange of a ticket the user got in a browser ... go on." And the answers table: a
429 on login -> "ExchangeServiceTicket is not held back".

(auth_service/storage/limit_repository.py start_account_cooldown kept one cooldown per account:
the token endpoint's 429 re-labelled the running SSO cooldown as one binding every call, and
kept its longer end. The row now keeps the sign-in's end beside it, migration 0013.)
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import grpc
import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import BLOCK_RATE_LIMITED, DI_TOKEN_PATH, LOGIN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure, failure_of
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

USER, EMAIL = "wren", "wren@example.com"
SSO_RETRY_AFTER = 3000  # Garmin's sign-in: come back in 50 minutes
TOKEN_RETRY_AFTER = 5  # Garmin's token endpoint: come back in 5 seconds


def test_a_short_token_endpoint_429_does_not_inherit_the_sign_ins_long_wait(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    # The sign-in cooldown of the login throttle off: only the gate's account cooldown holds
    # sign-ins back here.
    replica = service_factory.start(
        login_flow=LoginFlow.DI,
        clock=clock,
        login=replace(service_factory.base_settings.login, signin_cooldown_seconds=0),
    )
    garmin.add_user(EMAIL, PASSWORD)

    # The user is connected (a ticket from their browser).
    ticket = garmin.issue_ticket(EMAIL)
    replica.call(
        "ExchangeServiceTicket",
        pb.ExchangeServiceTicketRequest(user_id=USER, service_ticket=ticket),
    )

    # A re-login meets Garmin's sign-in 429: sign-ins wait 50 minutes; nothing else does.
    garmin.block_logins(BLOCK_RATE_LIMITED, retry_after=SSO_RETRY_AFTER)
    assert expect_failure(lambda: login(replica, USER, EMAIL)).reason == "GARMIN_RATE_LIMITED"

    # A refresh of the session meets one short 429 at the token endpoint (GetStatus(validate):
    # Garmin refused the access token, so the service refreshes it).
    garmin.expire_access_tokens(EMAIL)
    garmin.fail_next(DI_TOKEN_PATH, 429, retry_after=TOKEN_RETRY_AFTER)
    refreshed = expect_failure(
        lambda: replica.call("GetStatus", pb.GetStatusRequest(user_id=USER, validate=True))
    )
    assert refreshed.reason == "GARMIN_RATE_LIMITED"

    # The token endpoint's Retry-After has passed.
    clock.advance(TOKEN_RETRY_AFTER + 1)

    # The user signs in on Garmin's page in their browser and the app hands the ticket over.
    ticket = garmin.issue_ticket(EMAIL)
    before = garmin.request_count(DI_TOKEN_PATH)
    try:
        status = replica.call(
            "ExchangeServiceTicket",
            pb.ExchangeServiceTicketRequest(user_id=USER, service_ticket=ticket),
        ).status
    except grpc.RpcError as error:
        refused = failure_of(error)
        pytest.fail(
            f"ExchangeServiceTicket {TOKEN_RETRY_AFTER + 1}s after a {TOKEN_RETRY_AFTER}s "
            f"token-endpoint 429 answered {refused.code.name} {refused.reason} "
            f"(RetryInfo {refused.retry_seconds}s: the sign-in's {SSO_RETRY_AFTER}s wait), "
            f"Garmin not called ({garmin.request_count(DI_TOKEN_PATH) - before} token calls)"
        )
    assert status.state == pb.SESSION_STATE_ACTIVE

    # Sign-ins still wait out the SSO's Retry-After, on the account's own record of it.
    before = garmin.request_count(LOGIN_PATH)
    again = expect_failure(lambda: login(replica, USER, EMAIL))
    assert (again.reason, garmin.request_count(LOGIN_PATH) - before) == ("GARMIN_RATE_LIMITED", 0)
    assert again.retry_seconds is not None
    assert again.retry_seconds > SSO_RETRY_AFTER - TOKEN_RETRY_AFTER - 10
