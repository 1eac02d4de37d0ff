"""ImportSession: tokens a user already has become their ACTIVE session.

A DI pair from python-garminconnect's token file is refreshed once right away: the file
stores no refresh expiry, and after the rotation the service holds the only live refresh
token (the file's one is dead, so two clients cannot fight over it). If Garmin is busy the
imported pair stays as it is, its refresh expiry unknown, which keep-alive counts as due.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from auth_service.domain import validation
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    FieldViolation,
    GarminRateLimited,
    GarminUnavailable,
    LeaseHeld,
)
from auth_service.domain.models import GarminTokens, SessionStatusView
from auth_service.domain.views import status_view
from auth_service.services.connect import connect_tokens
from auth_service.services.session_refresh import RefreshAsker, SessionRefresher
from auth_service.services.unit_of_work import UnitsOfWork

log = logging.getLogger(__name__)

IMPORTED_PAIR_REJECTED = "Garmin rejected the imported refresh token"
_IMPORT_ASKER = RefreshAsker(AuditedRpc.IMPORT_SESSION, lambda _: IMPORTED_PAIR_REJECTED)


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
        with self._uow() as uow:
            row = uow.sessions.lock_or_create(user_id, uow.now)
            uow.challenges.delete_for_user(user_id)
            status = connect_tokens(uow, row, tokens, AuditedRpc.IMPORT_SESSION, validated=False)
        if not refresh_now:
            return status
        return self._refresh_imported(status)

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

    def _status_of(self, user_id: str) -> SessionStatusView:
        with self._uow() as uow:
            row = uow.sessions.find(user_id, uow.now)
            assert row is not None  # imported just now; rows are never deleted
            return status_view(row, uow.now)
