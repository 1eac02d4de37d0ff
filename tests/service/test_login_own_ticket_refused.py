"""Login and SubmitMfa exchange a ticket the service obtained itself. When Garmin refused that
ticket (it expired before the exchange, or Garmin's service-URL binding differs), the caller
got FAILED_PRECONDITION SERVICE_TICKET_REJECTED, which the README's error table reserves for
"the service ticket of ExchangeServiceTicket": a Login caller gave no ticket, and nothing it
can change would fix one. Garmin answered something the service could not use: UNAVAILABLE
GARMIN_UNAVAILABLE (try later), as the README's tables now say for Login and SubmitMfa.

SubmitMfa: Garmin spent the pending login when it accepted the code, so the retry the caller
is told to make meets "no pending login" and the challenge is dropped (NOT_FOUND
MFA_CHALLENGE_NOT_FOUND: log in again), never a loop of the same answer."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login
from tests.upstream.di_http import ticket_for

pytestmark = pytest.mark.timeout(60)

UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE")


@pytest.fixture
def dead_tickets(garmin: GarminEmulator) -> Iterator[None]:
    """Every ticket Garmin's SSO issues from now on is dead on arrival at the token endpoint."""
    garmin.di.ticket_ttl_seconds = -1.0
    yield
    garmin.di.ticket_ttl_seconds = 60.0


def test_login_whose_own_ticket_garmin_refuses_is_garmin_unavailable(
    service_factory: ServiceFactory, garmin: GarminEmulator, dead_tickets: None
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("tom@example.com", PASSWORD)

    failure = expect_failure(lambda: login(replica, "tom", "tom@example.com"))

    assert (failure.code, failure.reason) == UNAVAILABLE, (
        f"Login answered {failure.code.name} {failure.reason}: the README reserves "
        "SERVICE_TICKET_REJECTED for ExchangeServiceTicket's ticket"
    )
    assert garmin.request_count(DI_TOKEN_PATH) == 1  # refused once, not asked again


def test_submit_mfa_whose_own_ticket_garmin_refuses_is_garmin_unavailable_then_spent(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("uma@example.com", PASSWORD, mfa=True, mfa_code="135790")
    challenge = login(replica, "uma", "uma@example.com").mfa_challenge_id
    submit = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="135790")
    garmin.di.ticket_ttl_seconds = -1.0
    try:
        failure = expect_failure(lambda: replica.call("SubmitMfa", submit))
    finally:
        garmin.di.ticket_ttl_seconds = 60.0
    assert (failure.code, failure.reason) == UNAVAILABLE, failure.message

    # The code was accepted: Garmin holds no pending login any more, and says so.
    retried = expect_failure(lambda: replica.call("SubmitMfa", submit))
    assert (retried.code, retried.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "MFA_CHALLENGE_NOT_FOUND",
    ), retried.message


def test_exchange_service_ticket_still_answers_service_ticket_rejected(
    service_factory: ServiceFactory, garmin: GarminEmulator, dead_tickets: None
) -> None:
    """The caller's own ticket: refused, it is the caller's to replace."""
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("val@example.com", PASSWORD)
    ticket = ticket_for(garmin, "val@example.com", PASSWORD)
    request = pb.ExchangeServiceTicketRequest(user_id="val", service_ticket=ticket)

    failure = expect_failure(lambda: replica.call("ExchangeServiceTicket", request))

    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SERVICE_TICKET_REJECTED",
    )
