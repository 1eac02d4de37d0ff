"""ExchangeServiceTicket sent again with the same ticket (a caller that lost the answer: its
deadline, a cut connection), through real gRPC replicas on one database (SQLite and
PostgreSQL), Garmin played by the emulator over HTTP.

Before: the spent ticket went to Garmin again, which refused it, and the caller read
SERVICE_TICKET_REJECTED while the session the first call got was stored: an application
would ask its user to sign in again for nothing, and Garmin counted one more refused
exchange against the account. Now the row keeps a digest of the ticket its session came
from, and the same ticket for the same user id is answered from it, on any replica."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import grpc
import pytest
from sqlalchemy import text

from auth_service.domain.policies import ANDROID_SERVICE_URL, IOS_SERVICE_URL, LoginFlow
from auth_service.storage.database import create_engine_for
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure, failure_of
from tests.service.test_login import PASSWORD, login
from tests.upstream.di_http import ticket_for

pytestmark = pytest.mark.timeout(60)

EMAIL = "tess@example.com"


def exchange(
    replica: Replica, user_id: str, ticket: str, service_url: str = ""
) -> pb.SessionStatus:
    request = pb.ExchangeServiceTicketRequest(
        user_id=user_id, service_ticket=ticket, service_url=service_url
    )
    return cast(pb.SessionStatus, replica.call("ExchangeServiceTicket", request).status)


def test_the_same_ticket_again_answers_the_stored_session_without_garmin(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    first, second = service_factory.start(), service_factory.start()
    garmin.add_user(EMAIL, PASSWORD)
    ticket = ticket_for(garmin, EMAIL, PASSWORD)
    stored = exchange(first, "tess", ticket)
    exchanges = garmin.request_count(DI_TOKEN_PATH)

    retried = exchange(second, "tess", ticket)

    assert retried.state == pb.SESSION_STATE_ACTIVE
    assert retried.kind == pb.SESSION_KIND_DI_OAUTH2
    assert retried.session_version == stored.session_version  # the same session
    assert garmin.request_count(DI_TOKEN_PATH) == exchanges  # Garmin not asked again
    audited = first.call("ListAuditEvents", pb.ListAuditEventsRequest(user_id="tess")).events
    assert [(event.rpc, event.outcome_code) for event in audited] == [
        ("ExchangeServiceTicket", "OK"),
        ("ExchangeServiceTicket", "OK"),
    ]


def test_the_same_ticket_for_another_user_id_is_still_garmins_to_refuse(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start()
    garmin.add_user(EMAIL, PASSWORD)
    ticket = ticket_for(garmin, EMAIL, PASSWORD)
    exchange(replica, "tess", ticket)

    refused = expect_failure(lambda: exchange(replica, "tess-other", ticket))

    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SERVICE_TICKET_REJECTED",
    )


def test_the_same_ticket_for_another_service_url_is_still_garmins_to_refuse(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """The ticket was issued, and exchanged, for the iOS app's URL: sent again for another
    configured one, it is not the same exchange, and Garmin refuses it as it would have."""
    replica = service_factory.start()
    garmin.add_user(EMAIL, PASSWORD)
    ticket = ticket_for(garmin, EMAIL, PASSWORD)
    exchange(replica, "tess", ticket, IOS_SERVICE_URL)
    assert exchange(replica, "tess", ticket).state == pb.SESSION_STATE_ACTIVE  # the default

    refused = expect_failure(lambda: exchange(replica, "tess", ticket, ANDROID_SERVICE_URL))

    assert refused.reason == "SERVICE_TICKET_REJECTED"


@pytest.mark.parametrize("replaced_by", ["Login", "ExchangeServiceTicket"])
def test_a_ticket_answers_no_more_once_another_sign_in_replaced_its_session(
    service_factory: ServiceFactory, garmin: GarminEmulator, replaced_by: str
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user(EMAIL, PASSWORD)
    spent = ticket_for(garmin, EMAIL, PASSWORD)
    exchange(replica, "tess", spent)
    if replaced_by == "Login":
        assert login(replica, "tess", EMAIL).outcome == pb.LOGIN_OUTCOME_AUTHENTICATED
    else:
        exchange(replica, "tess", ticket_for(garmin, EMAIL, PASSWORD))

    refused = expect_failure(lambda: exchange(replica, "tess", spent))

    assert refused.reason == "SERVICE_TICKET_REJECTED"


def test_a_ticket_answers_no_more_once_its_session_was_deleted(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start()
    garmin.add_user(EMAIL, PASSWORD)
    ticket = ticket_for(garmin, EMAIL, PASSWORD)
    exchange(replica, "tess", ticket)
    replica.call("DeleteSession", pb.DeleteSessionRequest(user_id="tess"))

    refused = expect_failure(lambda: exchange(replica, "tess", ticket))

    assert refused.reason == "SERVICE_TICKET_REJECTED"


def _answer(replica: Replica, user_id: str, ticket: str, answers: list[Any]) -> None:
    try:
        answers.append(exchange(replica, user_id, ticket).state)
    except grpc.RpcError as error:
        answers.append(failure_of(error))


def _wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_retry_while_the_first_call_stores_its_session_waits_for_it(
    database_url: str, service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """Garmin answered the first call, whose commit waits (another writer holds the row), when
    the retry arrives on another replica. Before: the account's call ended with Garmin's
    answer, so the retry was admitted, sent the spent ticket to Garmin and answered
    SERVICE_TICKET_REJECTED, while the first call then stored the ticket's session. Now the
    call is held until the session is stored, and the retry waits for it. Found by review
    (s28)."""
    first, second = service_factory.start(), service_factory.start()
    garmin.add_user(EMAIL, PASSWORD)
    exchange(first, "tess", ticket_for(garmin, EMAIL, PASSWORD))  # the row exists
    ticket = ticket_for(garmin, EMAIL, PASSWORD)
    exchanges = garmin.request_count(DI_TOKEN_PATH)
    engine = create_engine_for(database_url)
    holder = engine.connect()
    transaction = holder.begin()
    holder.execute(
        text("SELECT 1 FROM garmin_authentication_state WHERE user_id = 'tess' FOR UPDATE")
    )
    first_answers: list[Any] = []
    retry_answers: list[Any] = []
    calls = [
        threading.Thread(target=_answer, args=(first, "tess", ticket, first_answers)),
        threading.Thread(target=_answer, args=(second, "tess", ticket, retry_answers)),
    ]
    try:
        calls[0].start()
        _wait_for(lambda: garmin.request_count(DI_TOKEN_PATH) > exchanges)
        time.sleep(0.3)  # Garmin answered the first call; its commit waits for the row
        calls[1].start()
        time.sleep(0.5)
    finally:
        transaction.rollback()
        holder.close()
        for call in calls:
            call.join(30)
        engine.dispose()

    assert first_answers == [pb.SESSION_STATE_ACTIVE]
    assert retry_answers == [pb.SESSION_STATE_ACTIVE]
    assert garmin.request_count(DI_TOKEN_PATH) == exchanges + 1  # the ticket went once
