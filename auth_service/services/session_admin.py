"""Looking after stored sessions: GetStatus (with Garmin's opinion on request), DeleteSession
and ListSessions.

Reads only read: an MFA_PENDING row whose challenge is gone is shown as what it settles to
(the repositories derive it; housekeeping writes it). GetStatus with validate calls Garmin
between two transactions and stores the answer only if the session is still the one asked
about, at most once per user per interval (auth_service.services.validation_limit); a
token that needs refreshing first is refreshed through the single-flight refresher
(auth_service.services.session_refresh), like every refresh the service makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from auth_service.domain import audit, validation
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminSessionRejected,
    LeaseHeld,
    SessionNotActive,
)
from auth_service.domain.garmin_limits import GarminCall, GarminLimitSettings, endpoints_of
from auth_service.domain.models import GarminTokens, SessionKind, SessionState, SessionStatusView
from auth_service.domain.paging import Pager, check_page_size
from auth_service.domain.policies import ACCESS_EXPIRY_MARGIN
from auth_service.domain.ports import GarminUpstream
from auth_service.domain.views import live_lease, refresh_claimed, status_view
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.session_refresh import (
    RefreshAsker,
    RefreshUnderWay,
    SessionRefresher,
)
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.services.validation_limit import ValidationLimit

# GetStatus(validate) records a rejection as such, with Garmin's reason.
_VALIDATING = RefreshAsker(
    AuditedRpc.GET_STATUS,
    reason_for=lambda message: f"validation: {message}",
    rejected_outcome=audit.SESSION_INVALIDATED,
)
# Why the gate may answer for Garmin without asking it (GarminRateLimited.held_back): a
# validation refused so does not count toward GARMIN_AUTH_VALIDATE_INTERVAL.
_NOT_ASKED = frozenset({"account_cooldown", "breaker_open"})


@dataclass(frozen=True)
class SessionPage:
    """One page of ListSessions."""

    sessions: list[SessionStatusView]
    next_page_token: str


class SessionAdmin:
    """GetStatus, DeleteSession, ListSessions."""

    def __init__(
        self,
        uow: UnitsOfWork,
        upstream: GarminUpstream,
        refresher: SessionRefresher,
        pager: Pager,
        gate: GarminGate | None = None,
        *,
        validate_interval: float = 0.0,
    ) -> None:
        self._uow = uow
        self._upstream = upstream
        self._refresher = refresher
        self._pager = pager
        self._gate = gate or GarminGate(uow, GarminLimitSettings())
        self._validations = ValidationLimit(timedelta(seconds=validate_interval))

    # --- GetStatus ---------------------------------------------------------------------

    def get_status(self, user_id: str, *, validate: bool) -> SessionStatusView:
        validation.raise_if_any(validation.check_user_id(user_id))
        with self._uow() as uow:
            row = uow.sessions.find(user_id, uow.now)
            if row is None:
                if validate:
                    # As for a deleted session (README, Errors): there is nothing to validate.
                    raise SessionNotActive("the user is not connected; nothing to validate")
                return SessionStatusView(user_id=user_id, state=SessionState.NOT_CONNECTED)
            if not validate:
                return status_view(row, uow.now)
            if row.state != SessionState.ACTIVE or row.session_ciphertext is None:
                raise SessionNotActive(f"the session is {row.state.value}; nothing to validate")
            tokens = uow.sessions.open_tokens(row)
            version, lease, now = row.session_version, live_lease(row, uow.now), uow.now
        if lease is not None and tokens.oauth2.expires_at <= now:
            raise LeaseHeld(
                f"the session is leased by {lease.holder!r} until {lease.expires_at.isoformat()} "
                "and its access token needs a refresh, which belongs to the lease holder"
            )
        leased_until = lease.expires_at if lease is not None else None
        # Counted only when Garmin is about to be asked; refused before it is.
        self._validations.admit(user_id, now)
        try:
            if lease is None and tokens.oauth2.expires_at <= now + ACCESS_EXPIRY_MARGIN:
                return self._refresh_and_validate(user_id, version)
            return self._validate_stored(user_id, version, tokens, leased_until=leased_until)
        except GarminRateLimited as refused:
            if refused.held_back in _NOT_ASKED:
                # Garmin was not asked after all: the next ask, once the wait is over, goes.
                self._validations.forget(user_id, now)
            raise

    def _validate_stored(
        self, user_id: str, version: int, tokens: GarminTokens, *, leased_until: datetime | None
    ) -> SessionStatusView:
        """Validate the stored access token and store Garmin's answer."""
        try:
            if not self._validate(user_id, tokens):
                return self._status(user_id)
        except GarminSessionRejected:
            # Garmin refused an access token we believed valid (revoked, clock skew): only a
            # refused refresh proves the session itself dead, never a 401 to a token that is
            # not fresh.
            if leased_until is not None:
                # The refresh belongs to the lease holder (RefreshLease), who will meet the
                # same 401; ending the session here would take a good one from under it.
                raise LeaseHeld(
                    f"Garmin refused the stored access token, and the session is leased until "
                    f"{leased_until.isoformat()}: the holder's refresh will tell whether the "
                    "session itself is dead; validate again after the lease"
                ) from None
            return self._refresh_and_validate(user_id, version)
        return self._apply_validation(user_id, version)

    def _refresh_and_validate(self, user_id: str, version: int) -> SessionStatusView:
        """Refresh (single flight; a rejection ends the session there), then validate the
        tokens in force. The refresh itself stored them as validated."""
        try:
            # Unleased only: a lease granted since the row was read holds the refresh token
            # (worker_full), which this refresh would kill (LeaseHeld, as above).
            refreshed = self._refresher.refresh(user_id, version, _VALIDATING, unleased=True)
        except GarminSessionRejected:
            return self._status(user_id)
        try:
            if not self._validate(user_id, refreshed.tokens):
                return self._status(user_id)
        except GarminSessionRejected as exc:
            if not refreshed.by_us:
                # Tokens this call did not obtain (a Login or ImportSession replaced the session
                # while Garmin answered, or another replica refreshed it) are not known to be
                # fresh: a 401 to them is no verdict on the session.
                return self._status(user_id)
            return self._apply_validation(
                user_id, refreshed.row.session_version, rejected=exc.message
            )
        if refreshed.by_us:
            with self._uow() as uow:
                return status_view(refreshed.row, uow.now)
        return self._apply_validation(user_id, refreshed.row.session_version)

    def _validate(self, user_id: str, tokens: GarminTokens) -> bool:
        """Garmin's opinion of the access token, through the gate (never refreshing).

        One validation of an account at a time: a caller that finds another's under way waits
        for it and shares its answer (False: the other one's, now stored). Raises
        GarminSessionRejected, GarminRateLimited, GarminUnavailable."""
        endpoints = endpoints_of(GarminCall.VALIDATE, tokens.kind)
        try:
            # An in-flight refusal is waited out below, not answered: not counted here.
            with self._gate.calling(
                user_id, endpoints, AuditedRpc.GET_STATUS, exclusive=True, count_in_flight=False
            ):
                self._upstream.validate(tokens, allow_refresh=False)
        except GarminRateLimited as refused:
            if not refused.another_call_in_flight:
                raise
            self._gate.wait_for_call(user_id, endpoints)  # raises when it met a 429
            return False
        return True

    def _status(self, user_id: str) -> SessionStatusView:
        with self._uow() as uow:
            row = uow.sessions.find(user_id, uow.now)
            if row is None:
                return SessionStatusView(user_id=user_id, state=SessionState.NOT_CONNECTED)
            return status_view(row, uow.now)

    def _apply_validation(
        self, user_id: str, version: int, *, rejected: str | None = None
    ) -> SessionStatusView:
        # A refresh of the version Garmin refused may be out at Garmin (a lease holder's
        # RefreshLease): its answer is the better word on the session.
        return self._refresher.after_refresh_under_way(
            lambda under_way: self._apply_validation_once(
                user_id, version, rejected=rejected, waited=under_way is not None
            )
        )

    def _apply_validation_once(
        self, user_id: str, version: int, *, rejected: str | None, waited: bool
    ) -> SessionStatusView | RefreshUnderWay:
        """Garmin's answer stored against session `version`; RefreshUnderWay, with nothing
        written, when it refused it while a refresh of that version is under way (unless
        `waited`)."""
        with self._uow() as uow:
            locked = uow.sessions.lock(user_id)
            assert locked is not None  # rows are never deleted
            if locked.session_version != version or locked.state != SessionState.ACTIVE:
                # Changed since we read it: Garmin's answer is about a session that is gone.
                return status_view(locked, uow.now)
            if rejected is not None and not waited and refresh_claimed(locked, uow.now):
                return RefreshUnderWay(user_id, version)
            ended = None
            if rejected is not None:
                ended = live_lease(locked, uow.now)  # invalidating ends it
                row = uow.sessions.invalidate(
                    user_id, version=version, reason=f"validation: {rejected}", now=uow.now
                )
                outcome = audit.SESSION_INVALIDATED
            else:
                row = uow.sessions.store_validation(user_id, version=version, now=uow.now)
                outcome = audit.OK
            assert row is not None  # locked above with this very version
            uow.audit.record(AuditedRpc.GET_STATUS, outcome, user_id=user_id, lease=ended)
            return status_view(row, uow.now)

    # --- DeleteSession -----------------------------------------------------------------

    def delete_session(self, user_id: str) -> None:
        validation.raise_if_any(validation.check_user_id(user_id))
        with self._uow() as uow:
            # The row's lock first, as Login takes it before it stores a challenge: deleting
            # first, on PostgreSQL, would miss the challenge of a Login committing meanwhile.
            locked = uow.sessions.lock(user_id)
            uow.challenges.delete_for_user(user_id)
            if locked is None:
                return
            ended = live_lease(locked, uow.now)
            uow.sessions.disconnect(user_id, uow.now)
            uow.audit.record(AuditedRpc.DELETE_SESSION, audit.OK, user_id=user_id, lease=ended)

    # --- ListSessions ------------------------------------------------------------------

    def list_sessions(
        self,
        *,
        page_size: int,
        page_token: str,
        state: SessionState | None,
        kind: SessionKind | None = None,
        user_id_prefix: str | None = None,
    ) -> SessionPage:
        """A page of statuses by user id, of one state and one session kind when given; a
        caller scoped to `user_id_prefix` sees only the users whose id starts with it."""
        validation.raise_if_any(check_page_size(page_size))
        fingerprint: object = state.value if state else None
        if kind is not None:
            # A token is only good for the filter it was issued for. Without a kind the
            # fingerprint stays what it was before kinds were filtered on, so tokens handed
            # out by an older replica keep working during a rollout.
            fingerprint = {"state": fingerprint, "kind": kind.value}
        if user_id_prefix is not None:
            # A token issued to one scope is refused in another (unscoped tokens unchanged).
            fingerprint = [fingerprint, user_id_prefix]
        request = self._pager.request(page_size, page_token, fingerprint, _after_user_id)
        with self._uow() as uow:
            rows = uow.sessions.list_page(
                after_user_id=request.after,
                state=state,
                kind=kind,
                limit=request.fetch,
                now=uow.now,
                user_id_prefix=user_id_prefix,
            )
            views = [status_view(row, uow.now) for row in rows]
        shown, next_token = self._pager.page(views, request, fingerprint, _position)
        return SessionPage(sessions=shown, next_page_token=next_token)


def _after_user_id(position: dict[str, Any]) -> str:
    after = position["after"]
    if not isinstance(after, str):
        raise TypeError("the position is not a user id")
    return after


def _position(view: SessionStatusView) -> dict[str, Any]:
    return {"after": view.user_id}
