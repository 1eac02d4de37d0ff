"""Every use case of one replica, built from the ports the composition root hands in."""

from __future__ import annotations

from dataclasses import dataclass

from auth_service.domain.change_ports import ChangeSignal, WebhookSender
from auth_service.domain.changes import StreamSettings, WebhookSettings
from auth_service.domain.clock import Clock
from auth_service.domain.events import LimitEvents, RefreshEvents, ServiceEvents
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.paging import Pager
from auth_service.domain.policies import LeaseSettings, LoginSettings, RefreshSettings
from auth_service.domain.ports import GarminUpstream
from auth_service.domain.repositories import Store
from auth_service.domain.signin_accounts import SignInAccounts
from auth_service.services.audit_log import AuditLog
from auth_service.services.connect import ConnectService
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.housekeeping import Housekeeping
from auth_service.services.issued_in_flight import IssuedInFlight
from auth_service.services.keepalive import KeepAlive
from auth_service.services.lease_handover import LeaseHandover
from auth_service.services.lease_refresh import LeaseRefresh
from auth_service.services.leases import LeaseService
from auth_service.services.session_admin import SessionAdmin
from auth_service.services.session_events import SessionEvents
from auth_service.services.session_import import SessionImport, TokenParsers
from auth_service.services.session_refresh import SessionRefresher
from auth_service.services.ticket_exchange import TicketExchange
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.services.webhooks import WebhookDelivery


@dataclass(frozen=True)
class ChangeStreamPorts:
    """What WatchSessionEvents and webhooks need (issue 16)."""

    signal: ChangeSignal
    stream: StreamSettings
    webhooks: WebhookSettings
    webhook_sender: WebhookSender | None


@dataclass(frozen=True)
class UseCases:
    """What the gRPC servicer (and the background housekeeping and keep-alive) call."""

    connect: ConnectService
    imports: SessionImport
    tickets: TicketExchange
    sessions: SessionAdmin
    leases: LeaseService
    lease_handover: LeaseHandover
    lease_refresh: LeaseRefresh
    audit_log: AuditLog
    housekeeping: Housekeeping
    keepalive: KeepAlive
    session_events: SessionEvents
    # None when no GARMIN_AUTH_WEBHOOK_URL is set.
    webhooks: WebhookDelivery | None
    # Sessions between Garmin and the database: a graceful stop waits for them.
    issued_in_flight: IssuedInFlight


def build_use_cases(  # noqa: PLR0913 - what the composition root hands in, by name
    store: Store,
    clock: Clock,
    upstream: GarminUpstream,
    pager: Pager,
    *,
    login: LoginSettings,
    leases: LeaseSettings,
    refresh: RefreshSettings,
    refresh_events: RefreshEvents,
    token_parsers: TokenParsers,
    limits: GarminLimitSettings | None = None,
    limit_events: LimitEvents | None = None,
    changes: ChangeStreamPorts,
    accounts: SignInAccounts | None = None,
    background_events: ServiceEvents | None = None,
) -> UseCases:
    uow = UnitsOfWork(store, clock)
    # Every call to Garmin passes the one gate: Garmin's 429s honoured on every replica.
    gate = GarminGate(uow, limits or GarminLimitSettings(), limit_events)
    # One refresher per replica: its bound on refreshes in flight covers every caller.
    # What Garmin issued this replica and it has not stored yet: a graceful stop waits.
    issued = IssuedInFlight()
    refresher = SessionRefresher(uow, upstream, refresh, refresh_events, gate, issued)
    lease_service = LeaseService(uow, refresher, leases, gate)
    return UseCases(
        connect=ConnectService(
            uow, upstream, login, gate, refresh.commit_retry_seconds, issued, accounts
        ),
        imports=SessionImport(uow, refresher, token_parsers, refresh, gate),
        tickets=TicketExchange(uow, upstream, login.service_urls, gate, refresh, issued),
        issued_in_flight=issued,
        sessions=SessionAdmin(
            uow,
            upstream,
            refresher,
            pager,
            gate,
            validate_interval=refresh.validate_interval_seconds,
        ),
        leases=lease_service,
        lease_handover=LeaseHandover(lease_service),
        lease_refresh=LeaseRefresh(uow, refresher),
        audit_log=AuditLog(uow, pager),
        housekeeping=Housekeeping(store, clock, login),
        keepalive=KeepAlive(uow, refresher, refresh, background_events),
        session_events=SessionEvents(uow, changes.signal, changes.stream),
        webhooks=None
        if changes.webhook_sender is None
        else WebhookDelivery(uow, changes.webhook_sender, changes.webhooks),
    )
