"""ImportSession: tokens a user already has become their ACTIVE session.

A DI pair from python-garminconnect's token file is refreshed once right away: the file
stores no refresh expiry, and after the rotation the service holds the only live refresh
token (the file's one is dead, so two clients cannot fight over it). If Garmin is busy the
imported pair stays as it is, its refresh expiry unknown, which keep-alive counts as due.

An import of the DI session the service holds already is a client's retry (gRPC clients
retry a call they saw time out, and an import waits on Garmin): the refresh token the row
holds, or the one its latest rotation replaced (which the first import's refresh may have
just killed). It installs nothing: installing would make a new session version, so the
first import's rotated pair would be dropped as replaced, and the dead token sent again
would end the session (invalid_grant). It answers the session as it is, and a retry of a
token file joins the refresh through the single-flight refresher like the first import.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from auth_service.domain import audit, validation
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    FieldViolation,
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
    InvalidArgument,
    LeaseHeld,
    SecretUnreadable,
)
from auth_service.domain.models import GarminTokens, SessionKind, SessionState, SessionStatusView
from auth_service.domain.views import SessionRow, live_lease, rotated_away, status_view
from auth_service.services.connect import connect_tokens
from auth_service.services.session_refresh import RefreshAsker, SessionRefresher
from auth_service.services.unit_of_work import UnitOfWork, UnitsOfWork

log = logging.getLogger(__name__)

IMPORTED_PAIR_REJECTED = "Garmin rejected the imported refresh token"
_IMPORT_ASKER = RefreshAsker(AuditedRpc.IMPORT_SESSION, lambda _: IMPORTED_PAIR_REJECTED)


class _Retry(enum.Enum):
    """Which refresh token of the stored session a retried import presents."""

    # The one the row holds: the first import's pair, maybe being refreshed right now.
    HELD = "held"
    # The one the row's latest rotation killed: the first import's refresh is done.
    ROTATED_AWAY = "rotated_away"


@dataclass(frozen=True)
class TokenParsers:
    """The token formats users bring (each raises ValueError, never quoting its input)."""

    garth: Callable[[str], GarminTokens]
    garminconnect: Callable[[str], GarminTokens]


class SessionImport:
    """ImportSession."""

    def __init__(
        self, uow: UnitsOfWork, refresher: SessionRefresher, parsers: TokenParsers
    ) -> None:
        self._uow = uow
        self._refresher = refresher
        self._parsers = parsers

    def import_session(
        self,
        user_id: str,
        *,
        tokens: GarminTokens | None = None,
        garth_token: str | None = None,
        garminconnect_tokens: str | None = None,
    ) -> SessionStatusView:
        violations = validation.check_user_id(user_id)
        refresh_now = False
        if tokens is None and garth_token is not None:
            tokens = self._parsed(self._parsers.garth, garth_token, "garth_token", violations)
        elif tokens is None and garminconnect_tokens is not None:
            tokens = self._parsed(
                self._parsers.garminconnect,
                garminconnect_tokens,
                "garminconnect_tokens",
                violations,
            )
            refresh_now = True
        elif tokens is None:
            violations.append(
                FieldViolation("source", "set session, garth_token or garminconnect_tokens")
            )
        validation.raise_if_any(violations)
        assert tokens is not None
        replaced: GarminTokens | None = None
        with self._uow() as uow:
            row = uow.sessions.lock_or_create(user_id, uow.now)
            held = _held_di_session(uow, row) if tokens.kind is SessionKind.DI_OAUTH2 else None
            retry = _retry_of(row, held, tokens)
            if retry is None:
                replaced = held if refresh_now and _held_by_nobody_else(uow, row) else None
                uow.challenges.delete_for_user(user_id)
                status = connect_tokens(
                    uow, row, tokens, AuditedRpc.IMPORT_SESSION, validated=False
                )
            else:
                status = _unchanged(uow, row, retry)
        # The service rotated the presented token away itself: nothing left to refresh.
        if not refresh_now or retry is _Retry.ROTATED_AWAY:
            return status
        try:
            return self._refresh_imported(status)
        except GarminSessionRejected:
            if replaced is None:
                raise
            # The file's refresh token was dead (an old copy, retried after the session
            # was refreshed since): it must not cost the session it replaced.
            self._put_back(status, replaced)
            raise InvalidArgument(
                [
                    FieldViolation(
                        "garminconnect_tokens",
                        "its refresh token is no longer valid at Garmin (an old copy?); the "
                        "session held before is kept",
                    )
                ]
            ) from None

    @staticmethod
    def _parsed(
        parse: Callable[[str], GarminTokens],
        text: str,
        field: str,
        violations: list[FieldViolation],
    ) -> GarminTokens | None:
        try:
            return parse(text)
        except ValueError as exc:
            violations.append(FieldViolation(field, str(exc)))
            return None

    def _refresh_imported(self, imported: SessionStatusView) -> SessionStatusView:
        # Through the one refresher: claimed on the row, the rotated pair committed (and
        # retried into a database that refuses it) before anything else sees it.
        try:
            refreshed = self._refresher.refresh(
                imported.user_id, imported.session_version, _IMPORT_ASKER, unleased=True
            )
        except LeaseHeld:
            # Granted since the import: the refresh belongs to the holder now (worker_full
            # holders have the refresh token this refresh would kill).
            log.info("imported session of user %s leased before its refresh", imported.user_id)
            return self._status_of(imported.user_id)
        except (GarminRateLimited, GarminUnavailable) as exc:
            log.warning(
                "imported session of user %s not refreshed yet (%s); keep-alive will",
                imported.user_id,
                type(exc).__name__,
            )
            return imported
        return status_view(refreshed.row, self._uow.now())

    def _put_back(self, imported: SessionStatusView, replaced: GarminTokens) -> None:
        """Install again the session the import replaced, once Garmin rejected the imported
        refresh token: only over the row the rejection ended (anything since wins)."""
        with self._uow() as uow:
            locked = uow.sessions.lock_or_create(imported.user_id, uow.now)
            ended_by_the_rejection = (
                locked.state is SessionState.AUTH_EXPIRED
                and locked.session_version == imported.session_version + 1
            )
            if ended_by_the_rejection:
                log.info("user %s: the imported pair was dead; session put back", locked.user_id)
                connect_tokens(uow, locked, replaced, AuditedRpc.IMPORT_SESSION, validated=False)

    def _status_of(self, user_id: str) -> SessionStatusView:
        with self._uow() as uow:
            row = uow.sessions.find(user_id, uow.now)
            assert row is not None  # imported just now; rows are never deleted
            return status_view(row, uow.now)


def _is_active_di(row: SessionRow) -> bool:
    return row.state is SessionState.ACTIVE and row.session_kind is SessionKind.DI_OAUTH2


def _held_di_session(uow: UnitOfWork, locked: SessionRow) -> GarminTokens | None:
    """The ACTIVE DI session the user's `locked` row holds, opened once for both uses below
    (None: none, or it fails to open, and then the import replaces it as any import would)."""
    if not _is_active_di(locked):
        return None
    try:
        return uow.sessions.open_tokens(locked)
    except SecretUnreadable:
        return None


def _retry_of(locked: SessionRow, held: GarminTokens | None, tokens: GarminTokens) -> _Retry | None:
    """Whether importing `tokens` over the user's `locked` row (holding `held`) repeats an
    import of the DI session the row holds (None: new credentials, installed as usual). Garth
    sessions are always installed: their exchange rotates nothing, so a second one loses
    nothing."""
    if tokens.kind is not SessionKind.DI_OAUTH2 or not _is_active_di(locked):
        return None
    presented = tokens.oauth2.refresh_token
    if rotated_away(locked, presented):
        return _Retry.ROTATED_AWAY
    held_token = held.oauth2.refresh_token if held is not None else None
    if held_token is not None and hmac.compare_digest(held_token.encode(), presented.encode()):
        return _Retry.HELD
    return None


def _held_by_nobody_else(uow: UnitOfWork, locked: SessionRow) -> bool:
    """Whether the session an import replaces may be put back if the imported refresh token
    turns out dead at its first refresh: not while someone else may present its refresh token
    meanwhile, which would make it dead too: a live lease (a worker_full holder refreshes by
    itself; the import ends its lease, which it learns only at its next call) or another
    replica's refresh claim."""
    claimed = locked.refresh_claimed_until is not None and locked.refresh_claimed_until > uow.now
    return not claimed and live_lease(locked, uow.now) is None


def _unchanged(uow: UnitOfWork, locked: SessionRow, retry: _Retry) -> SessionStatusView:
    """A retried import: the session stays as it is (no new version, a claim or lease on it
    stands, a pending sign-in stays pending), recorded as an import that changed nothing."""
    log.info(
        "user %s: ImportSession of the session held already (%s token); nothing installed",
        locked.user_id,
        retry.value,
    )
    uow.audit.record(AuditedRpc.IMPORT_SESSION, audit.OK, user_id=locked.user_id, changed=False)
    return status_view(locked, uow.now)
