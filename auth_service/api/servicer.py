"""The gRPC servicer: each method translates a request into a domain call and the result back.

Authentication, authorisation, logging and error mapping happen once, in the interceptor.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import grpc

from auth_service.api import convert, stream_convert
from auth_service.api.callers import VALIDATE_ROLES, Caller, current_caller
from auth_service.api.stream_guard import SendGuard
from auth_service.domain.audit import AuditEventView, AuditFilter
from auth_service.domain.errors import (
    CallerForbidden,
    CallerUnauthenticated,
    OutsideUserScope,
    ReplicaStopping,
)
from auth_service.domain.models import GarminTokens
from auth_service.domain.validation import check_user_id, raise_if_any
from auth_service.services.lease_handover import RELEASE_FIELDS, LeaseRelease
from auth_service.services.use_cases import UseCases
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_client.session_proto import tokens_to_proto


def _ttl(
    request: pb.LeaseSessionRequest | pb.LeaseNextSessionRequest | pb.RenewLeaseRequest,
) -> timedelta | None:
    return convert.from_duration(request.ttl, "ttl", present=request.HasField("ttl"))


def _synced_through(request: pb.ReleaseLeaseRequest, fields: str = "") -> datetime | None:
    if not request.HasField("synced_through"):
        return None
    return convert.from_timestamp(request.synced_through, f"{fields}synced_through")


def _garmin_retry_after(request: pb.ReleaseLeaseRequest, fields: str = "") -> timedelta | None:
    return convert.from_duration(
        request.garmin_retry_after,
        f"{fields}garmin_retry_after",
        present=request.HasField("garmin_retry_after"),
    )


def _audit_event_to_proto(event: AuditEventView) -> pb.AuditEvent:
    return pb.AuditEvent(
        event_id=event.event_id,
        occurred_at=event.occurred_at,
        caller=event.caller,
        rpc=event.rpc,
        user_id=event.user_id or "",
        outcome_code=event.outcome_code,
        outcome_reason=event.outcome_reason,
        lease_ref=event.lease_ref or "",
        fencing_token=event.fencing_token or 0,
    )


def _caller() -> Caller | None:
    return current_caller.get()


def _scope() -> str | None:
    caller = _caller()
    return None if caller is None else caller.user_id_prefix


def _check_reach(user_id: str) -> None:
    """A scoped caller reaches only its users; decided on the id alone, before any read. An
    id that is no user id at all (empty, malformed) is the request's fault, answered as
    such: CALLER_FORBIDDEN with scope=user would tell a worker to skip that "user"."""
    caller = _caller()
    if caller is not None and not caller.may_reach(user_id):
        raise_if_any(check_user_id(user_id))
        raise OutsideUserScope(f"caller {caller.name!r} may not reach users outside its scope")


def _check_may_validate() -> None:
    """GetStatus(validate) calls Garmin and may change the session: admins only."""
    caller = _caller()
    if caller is not None and not caller.roles & VALIDATE_ROLES:
        raise CallerForbidden(
            f"caller {caller.name!r} may read statuses but not validate them with Garmin "
            f"(validate=true needs one of {sorted(VALIDATE_ROLES)})"
        )


def _gets_full_session() -> bool:
    """Whether grants hand this caller the whole session: worker_full (legacy workers)."""
    caller = _caller()
    return caller is not None and caller.full_sessions


def _full_session(tokens: GarminTokens) -> pb.GarminSession | None:
    """The whole session for worker_full callers; nothing for the rest."""
    return tokens_to_proto(tokens) if _gets_full_session() else None


class GarminAuthServicer(pb_grpc.GarminAuthServiceServicer):
    """garmin_auth.v1.GarminAuthService over the use cases (auth_service.services)."""

    def __init__(self, use_cases: UseCases) -> None:
        self._connect = use_cases.connect
        self._imports = use_cases.imports
        self._tickets = use_cases.tickets
        self._sessions = use_cases.sessions
        self._leases = use_cases.leases
        self._handover = use_cases.lease_handover
        self._lease_refresh = use_cases.lease_refresh
        self._audit = use_cases.audit_log
        self._events = use_cases.session_events
        self._send_guard = SendGuard(use_cases.session_events.settings.send_timeout_seconds)

    def stop_streams(self) -> None:
        """The replica is stopping: a watch parked in gRPC's send (its consumer reading
        slowly) ends now with UNAVAILABLE REPLICA_STOPPING; the others see the stop when
        they next wait for data (SessionEvents.stop)."""
        self._send_guard.stop(
            ReplicaStopping("this replica is stopping; resume from the last cursor read")
        )

    def Login(self, request: pb.LoginRequest, context: grpc.ServicerContext) -> pb.LoginResponse:
        _check_reach(request.user_id)
        answer = self._connect.login(request.user_id, request.email, request.password)
        return pb.LoginResponse(
            outcome=pb.LOGIN_OUTCOME_MFA_REQUIRED
            if answer.mfa_challenge_id
            else pb.LOGIN_OUTCOME_AUTHENTICATED,
            mfa_challenge_id=answer.mfa_challenge_id or "",
            mfa_method=answer.mfa_method or "",
            mfa_expires_at=answer.mfa_expires_at,
            status=convert.status_to_proto(answer.status),
        )

    def SubmitMfa(
        self, request: pb.SubmitMfaRequest, context: grpc.ServicerContext
    ) -> pb.SubmitMfaResponse:
        status = self._connect.submit_mfa(
            request.mfa_challenge_id, request.code, user_id_prefix=_scope()
        )
        return pb.SubmitMfaResponse(status=convert.status_to_proto(status))

    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetStatusResponse:
        _check_reach(request.user_id)
        if request.validate:
            _check_may_validate()
        status = self._sessions.get_status(request.user_id, validate=request.validate)
        return pb.GetStatusResponse(status=convert.status_to_proto(status))

    def ImportSession(
        self, request: pb.ImportSessionRequest, context: grpc.ServicerContext
    ) -> pb.ImportSessionResponse:
        _check_reach(request.user_id)
        source = request.WhichOneof("source")
        status = self._imports.import_session(
            request.user_id,
            tokens=convert.tokens_from_proto(request.session, "session")
            if source == "session"
            else None,
            garth_token=request.garth_token if source == "garth_token" else None,
            garminconnect_tokens=request.garminconnect_tokens
            if source == "garminconnect_tokens"
            else None,
        )
        return pb.ImportSessionResponse(status=convert.status_to_proto(status))

    def ExchangeServiceTicket(
        self, request: pb.ExchangeServiceTicketRequest, context: grpc.ServicerContext
    ) -> pb.ExchangeServiceTicketResponse:
        _check_reach(request.user_id)
        status = self._tickets.exchange_service_ticket(
            request.user_id, request.service_ticket, request.service_url
        )
        return pb.ExchangeServiceTicketResponse(status=convert.status_to_proto(status))

    def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteSessionResponse:
        _check_reach(request.user_id)
        self._sessions.delete_session(request.user_id)
        return pb.DeleteSessionResponse()

    def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.ServicerContext
    ) -> pb.ListSessionsResponse:
        state, kind = convert.listing_filter(request)
        page = self._sessions.list_sessions(
            page_size=request.page_size,
            page_token=request.page_token,
            state=state,
            kind=kind,
            user_id_prefix=_scope(),
        )
        return pb.ListSessionsResponse(
            sessions=[convert.status_to_proto(status) for status in page.sessions],
            next_page_token=page.next_page_token,
        )

    def LeaseSession(
        self, request: pb.LeaseSessionRequest, context: grpc.ServicerContext
    ) -> pb.LeaseSessionResponse:
        grant = self._leases.lease_session(
            request.user_id,
            request.holder,
            _ttl(request),
            user_id_prefix=_scope(),
            with_refresh_token=_gets_full_session(),
        )
        return pb.LeaseSessionResponse(
            lease=convert.lease_to_proto(grant.lease),
            session=_full_session(grant.tokens),
            status=convert.status_to_proto(grant.status, reveal_lease_id=True),
            access=convert.access_to_proto(grant.tokens),
        )

    def LeaseNextSession(
        self, request: pb.LeaseNextSessionRequest, context: grpc.ServicerContext
    ) -> pb.LeaseNextSessionResponse:
        min_sync_interval = convert.from_duration(
            request.min_sync_interval,
            "min_sync_interval",
            present=request.HasField("min_sync_interval"),
        )
        released = None
        if request.HasField("release"):
            handover = self._handover.release_and_lease_next(
                LeaseRelease(
                    request.release.lease_id,
                    _synced_through(request.release, RELEASE_FIELDS),
                    _garmin_retry_after(request.release, RELEASE_FIELDS),
                ),
                request.holder,
                _ttl(request),
                min_sync_interval,
                user_id_prefix=_scope(),
                with_refresh_token=_gets_full_session(),
            )
            grant, released = handover.grant, convert.status_to_proto(handover.released)
        else:
            grant = self._leases.lease_next_session(
                request.holder,
                _ttl(request),
                min_sync_interval,
                user_id_prefix=_scope(),
                with_refresh_token=_gets_full_session(),
            )
        if grant is None:
            return pb.LeaseNextSessionResponse(released=released)
        return pb.LeaseNextSessionResponse(
            lease=convert.lease_to_proto(grant.lease),
            session=_full_session(grant.tokens),
            status=convert.status_to_proto(grant.status, reveal_lease_id=True),
            access=convert.access_to_proto(grant.tokens),
            released=released,
        )

    def RenewLease(
        self, request: pb.RenewLeaseRequest, context: grpc.ServicerContext
    ) -> pb.RenewLeaseResponse:
        lease = self._leases.renew_lease(request.lease_id, _ttl(request), user_id_prefix=_scope())
        return pb.RenewLeaseResponse(lease=convert.lease_to_proto(lease))

    def RefreshLease(
        self, request: pb.RefreshLeaseRequest, context: grpc.ServicerContext
    ) -> pb.RefreshLeaseResponse:
        answer = self._lease_refresh.refresh_lease(
            request.lease_id, request.session_version, user_id_prefix=_scope()
        )
        return pb.RefreshLeaseResponse(
            access=convert.access_to_proto(answer.tokens),
            status=convert.status_to_proto(answer.status),
        )

    def ReleaseLease(
        self, request: pb.ReleaseLeaseRequest, context: grpc.ServicerContext
    ) -> pb.ReleaseLeaseResponse:
        status = self._leases.release_lease(
            request.lease_id,
            _synced_through(request),
            _garmin_retry_after(request),
            user_id_prefix=_scope(),
        )
        return pb.ReleaseLeaseResponse(status=convert.status_to_proto(status))

    def ReportRefreshed(
        self, request: pb.ReportRefreshedRequest, context: grpc.ServicerContext
    ) -> pb.ReportRefreshedResponse:
        tokens = convert.tokens_from_proto(request.session, "session")
        status = self._leases.report_refreshed(
            request.lease_id,
            tokens,
            session_version=request.session_version,
            user_id_prefix=_scope(),
        )
        return pb.ReportRefreshedResponse(status=convert.status_to_proto(status))

    def ReportInvalidated(
        self, request: pb.ReportInvalidatedRequest, context: grpc.ServicerContext
    ) -> pb.ReportInvalidatedResponse:
        status = self._leases.report_invalidated(
            request.lease_id,
            request.reason,
            session_version=request.session_version,
            user_id_prefix=_scope(),
        )
        return pb.ReportInvalidatedResponse(status=convert.status_to_proto(status))

    def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        if request.user_id:
            _check_reach(request.user_id)
        start_time, end_time = convert.time_range(request)
        query = AuditFilter(
            user_id=request.user_id or None,
            start_time=start_time,
            end_time=end_time,
            oldest_first=request.oldest_first,
            user_id_prefix=_scope(),
        )
        page = self._audit.list_events(
            query, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListAuditEventsResponse(
            events=[_audit_event_to_proto(event) for event in page.events],
            next_page_token=page.next_page_token,
        )

    def WatchSessionEvents(
        self, request: pb.WatchSessionEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SessionEvent]:
        # Fail closed: the interceptor admits a caller before any stream starts; a stream
        # that reached here without one was let through unchecked.
        if _caller() is None:
            raise CallerUnauthenticated("no authenticated caller")
        if request.user_id:
            _check_reach(request.user_id)
        wanted = stream_convert.change_filter(request, _scope())
        watch = self._events.watch(request.after_cursor, wanted)
        context.add_callback(watch.cancel)
        events = (stream_convert.event_to_proto(item) for item in watch)
        yield from self._send_guard.guarded(events, context)
