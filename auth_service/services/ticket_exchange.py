"""ExchangeServiceTicket: the way in while Garmin blocks server sign-ins. The user signs in
on Garmin's own page in their browser, and the application passes the service ticket that
page hands out; the service exchanges it for a DI session.

Tickets are single-use and live about a minute: the exchange happens at once, and a ticket
Garmin refuses (used, expired, issued for another service URL) answers
SERVICE_TICKET_REJECTED. The row keeps a digest of the ticket its session came from, so a
caller that lost the answer and sends the same ticket again for the same user gets the
stored session's status, without the spent ticket going to Garmin again.
"""

from __future__ import annotations

import logging

from auth_service.domain import audit, validation
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import GarminRateLimited, ServiceTicketRejected
from auth_service.domain.garmin_limits import GarminCall, GarminLimitSettings, endpoints_of
from auth_service.domain.models import SessionKind, SessionStatusView
from auth_service.domain.policies import RefreshSettings
from auth_service.domain.ports import GarminUpstream
from auth_service.domain.views import exchanged_from, service_ticket_digest, status_view
from auth_service.services.connect import store_signed_in
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.issued_in_flight import IssuedInFlight
from auth_service.services.unit_of_work import UnitsOfWork

log = logging.getLogger(__name__)

_ENDPOINTS = endpoints_of(GarminCall.EXCHANGE_TICKET, SessionKind.DI_OAUTH2)


class TicketExchange:
    """ExchangeServiceTicket."""

    def __init__(
        self,
        uow: UnitsOfWork,
        upstream: GarminUpstream,
        service_urls: tuple[str, ...],
        gate: GarminGate | None = None,
        settings: RefreshSettings | None = None,
        in_flight: IssuedInFlight | None = None,
    ) -> None:
        self._uow = uow
        self._settings = settings or RefreshSettings()
        self._in_flight = in_flight or IssuedInFlight()
        self._upstream = upstream
        self._gate = gate or GarminGate(uow, GarminLimitSettings())
        # The first is the default: the iOS app's, unless configured otherwise.
        self._service_urls = service_urls

    def exchange_service_ticket(
        self, user_id: str, service_ticket: str, service_url: str
    ) -> SessionStatusView:
        service_url = service_url or self._service_urls[0]
        validation.raise_if_any(
            validation.check_user_id(user_id),
            validation.check_service_ticket(service_ticket),
            validation.check_service_url(service_url, self._service_urls),
        )
        digest = service_ticket_digest(service_ticket, service_url)
        waited = False
        while True:
            answered = self._already_exchanged(user_id, digest)
            if answered is not None:
                return answered
            try:
                return self._exchange(user_id, service_ticket, service_url, digest, waited=waited)
            except GarminRateLimited as refused:
                # Another exchange or sign-in of the account is with Garmin, or storing what
                # it got: maybe this very ticket's, sent again after a lost answer. Once it
                # is over, this one is known for a retry, or goes on.
                if waited or not refused.another_call_in_flight:
                    raise
            self._gate.wait_for_call(user_id, _ENDPOINTS, self._settings.wait_seconds)
            waited = True

    def _exchange(
        self, user_id: str, service_ticket: str, service_url: str, digest: str, *, waited: bool
    ) -> SessionStatusView:
        """Exchange the ticket and store the session (`digest`: service_ticket_digest), as
        the account's one call in flight (raises GarminRateLimited when another is;
        `waited`: this call waited for another already, so a refusal now is its answer,
        counted)."""
        try:
            # Not held back by the account's sign-in cooldown (this is the way in while
            # Garmin blocks our sign-ins), but by Garmin's 429s like every call. Held until
            # the session is stored (a retry of the same ticket admitted before would send
            # Garmin a spent ticket), for at most a refresh claim's Garmin call and margin:
            # a replica that dies here holds the account's next ticket back no longer. A
            # commit the database refuses for longer is retried past it, and a retry then
            # finds the row unreadable too, or the session stored (below).
            with self._gate.calling(
                user_id,
                _ENDPOINTS,
                AuditedRpc.EXCHANGE_SERVICE_TICKET,
                exclusive=True,
                hold_seconds=self._settings.claim_seconds,
                count_in_flight=waited,
            ) as call:
                # The same ticket's exchange may have landed between the look and the claim.
                answered = self._already_exchanged(user_id, digest)
                if answered is not None:
                    call.did_not_reach(*_ENDPOINTS)
                    return answered
                with self._in_flight.holding():
                    tokens = self._upstream.exchange_service_ticket(service_ticket, service_url)
                    # Garmin answered: a breaker this call probed closes now, for every
                    # account; the account's call stays claimed until the session is stored.
                    self._gate.answered_keeping_call(call)
                    # The ticket is spent: the new session is waited into the database.
                    return store_signed_in(
                        self._uow,
                        user_id,
                        tokens,
                        AuditedRpc.EXCHANGE_SERVICE_TICKET,
                        self._settings.commit_retry_seconds,
                        exchanged_ticket_sha256=digest,
                    )
        except ServiceTicketRejected:
            # Only if the account's call ran out before the first call's commit (a database
            # refusing it for long) can that call have stored the ticket's session since.
            answered = self._already_exchanged(user_id, digest)
            if answered is None:
                raise
            return answered

    def _already_exchanged(self, user_id: str, ticket_digest: str) -> SessionStatusView | None:
        """The status of the user's session if it is the one this very ticket was exchanged
        for, for the same service URL (a retry after a lost answer): the ticket is spent, and
        that session its answer."""
        with self._uow() as uow:
            row = uow.sessions.find(user_id, uow.now)
            if row is None or not exchanged_from(row, ticket_digest):
                return None
            log.info("user %s: service ticket exchanged before; its session answers", user_id)
            # Recorded as an exchange that changed nothing, as a retried import is.
            uow.audit.record(
                AuditedRpc.EXCHANGE_SERVICE_TICKET, audit.OK, user_id=user_id, changed=False
            )
            return status_view(row, uow.now)
