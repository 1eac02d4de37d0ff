"""ExchangeServiceTicket: the way in while Garmin blocks server sign-ins. The user signs in
on Garmin's own page in their browser, and the application passes the service ticket that
page hands out; the service exchanges it for a DI session.

Tickets are single-use and live about a minute: the exchange happens at once, and a ticket
Garmin refuses (used, expired, issued for another service URL) answers
SERVICE_TICKET_REJECTED.
"""

from __future__ import annotations

from auth_service.domain import validation
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.garmin_limits import GarminCall, GarminLimitSettings, endpoints_of
from auth_service.domain.models import SessionKind, SessionStatusView
from auth_service.domain.policies import RefreshSettings
from auth_service.domain.ports import GarminUpstream
from auth_service.services.connect import store_signed_in
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.issued_in_flight import IssuedInFlight
from auth_service.services.unit_of_work import UnitsOfWork


class TicketExchange:
    """ExchangeServiceTicket."""

    def __init__(
        self,
        uow: UnitsOfWork,
        upstream: GarminUpstream,
        service_urls: tuple[str, ...],
        gate: GarminGate | None = None,
        commit_retry_seconds: float = RefreshSettings.commit_retry_seconds,
        in_flight: IssuedInFlight | None = None,
    ) -> None:
        self._uow = uow
        self._commit_retry_seconds = commit_retry_seconds
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
        # Not held back by the account's sign-in cooldown (this is the way in while Garmin
        # blocks our sign-ins), but by Garmin's 429s like every call.
        endpoints = endpoints_of(GarminCall.EXCHANGE_TICKET, SessionKind.DI_OAUTH2)
        with self._in_flight.holding():
            with self._gate.calling(
                user_id, endpoints, AuditedRpc.EXCHANGE_SERVICE_TICKET, exclusive=True
            ):
                tokens = self._upstream.exchange_service_ticket(service_ticket, service_url)
            # The ticket is spent: the new session is waited into the database.
            return store_signed_in(
                self._uow,
                user_id,
                tokens,
                AuditedRpc.EXCHANGE_SERVICE_TICKET,
                self._commit_retry_seconds,
            )
