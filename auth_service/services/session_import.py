"""ImportSession: tokens a user already has become their ACTIVE session.

A DI pair from python-garminconnect's token file is refreshed at Garmin before anything is
stored, and the rotated pair is what the import installs:

- the file stores no refresh expiry, and after the rotation the service holds the only live
  refresh token (the file's one is dead, so two clients cannot fight over it);
- a file whose refresh token Garmin rejects (an old copy, refreshed by someone since)
  changes nothing: the session the user has stays, whoever holds or refreshes it meanwhile;
- while Garmin is busy (429, 5xx, no answer) nothing is stored either, and the caller is
  told to retry (installing the pair unchecked would leave it to die at its first refresh
  if the file was old, and leave a live token in the file meanwhile).

The refresh is the account's one call to Garmin in flight on every replica (the gate's
`exclusive` call), held until its pair is committed: the same file sent again meanwhile
waits for it, then finds the file's refresh token among those the row's rotations replaced
and installs nothing.

An import of the DI session the service holds already is a client's retry (gRPC clients
retry a call they saw time out, and an import waits on Garmin): the refresh token the row
holds, or one its rotations replaced. It installs nothing: installing would make a new
session version, so the pair rotated since would be dropped as replaced, and the dead token
sent again would end the session (invalid_grant). It answers the session as it is, and a
token file holding the row's own refresh token joins the refresh through the single-flight
refresher.

Tokens given field by field (`session`) and garth's dumps are stored as given.
"""

from __future__ import annotations

import enum
import hmac
import logging
import time
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
    RefreshTokenImportedElsewhere,
    SecretUnreadable,
)
from auth_service.domain.garmin_limits import GarminCall, GarminLimitSettings, endpoints_of
from auth_service.domain.models import GarminTokens, SessionKind, SessionState, SessionStatusView
from auth_service.domain.policies import RefreshSettings
from auth_service.domain.views import SessionRow, rotated_away, status_view
from auth_service.services.commit_retry import commit_retried
from auth_service.services.connect import connect_tokens
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.session_refresh import RefreshAsker, SessionRefresher
from auth_service.services.unit_of_work import UnitOfWork, UnitsOfWork

log = logging.getLogger(__name__)

IMPORTED_PAIR_REJECTED = "Garmin rejected the imported refresh token"
_IMPORT_ASKER = RefreshAsker(AuditedRpc.IMPORT_SESSION, lambda _: IMPORTED_PAIR_REJECTED)
_REFRESH_ENDPOINTS = endpoints_of(GarminCall.REFRESH, SessionKind.DI_OAUTH2)


class _Retry(enum.Enum):
    """Which refresh token of the stored session a retried import presents."""

    # The one the row holds (tokens imported as given, then the same pair as a token file):
    # maybe being refreshed right now.
    HELD = "held"
    # One the row's rotations killed: the first import's refresh is done.
    ROTATED_AWAY = "rotated_away"


@dataclass(frozen=True)
class TokenParsers:
    """The token formats users bring (each raises ValueError, never quoting its input)."""

    garth: Callable[[str], GarminTokens]
    garminconnect: Callable[[str], GarminTokens]


class SessionImport:
    """ImportSession."""

    def __init__(
        self,
        uow: UnitsOfWork,
        refresher: SessionRefresher,
        parsers: TokenParsers,
        settings: RefreshSettings,
        gate: GarminGate | None = None,
    ) -> None:
        self._uow = uow
        self._refresher = refresher
        self._parsers = parsers
        self._settings = settings
        self._gate = gate or GarminGate(uow, GarminLimitSettings())

    def import_session(
        self,
        user_id: str,
        *,
        tokens: GarminTokens | None = None,
        garth_token: str | None = None,
        garminconnect_tokens: str | None = None,
    ) -> SessionStatusView:
        violations = validation.check_user_id(user_id)
        token_file = False
        if tokens is None and garth_token is not None:
            tokens = self._parsed(self._parsers.garth, garth_token, "garth_token", violations)
        elif tokens is None and garminconnect_tokens is not None:
            tokens = self._parsed(
                self._parsers.garminconnect,
                garminconnect_tokens,
                "garminconnect_tokens",
                violations,
            )
            token_file = True
        elif tokens is None:
            violations.append(
                FieldViolation("source", "set session, garth_token or garminconnect_tokens")
            )
        validation.raise_if_any(violations)
        assert tokens is not None
        if token_file:
            return self._import_token_file(user_id, tokens)
        return self._install_as_given(user_id, tokens)

    def _refuse_if_imported_elsewhere(self, user_id: str, tokens: GarminTokens) -> None:
        """Raise RefreshTokenImportedElsewhere when another user id's ACTIVE session was
        imported from the token file's refresh token, before Garmin is asked: refreshing
        from it would kill that session's chain (or, if Garmin answers a reused token by
        revoking the newest too, the other user's session; the facts file leaves it open)."""
        with self._uow() as uow:
            if uow.sessions.imported_elsewhere(user_id, tokens.oauth2.refresh_token):
                raise RefreshTokenImportedElsewhere("garminconnect_tokens")

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

    # --- tokens stored as given ----------------------------------------------------------

    def _install_as_given(self, user_id: str, tokens: GarminTokens) -> SessionStatusView:
        try:
            return self._store_as_given(user_id, tokens)
        except RefreshTokenImportedElsewhere:
            # The check, or another user id's import of the token committed after it (the
            # unique index): the caller's field either way.
            raise RefreshTokenImportedElsewhere("session") from None

    def _store_as_given(self, user_id: str, tokens: GarminTokens) -> SessionStatusView:
        # A DI refresh token held by two rows would be refreshed by both, and the second
        # refresh loses the account: one imported token, one ACTIVE session.
        imported = tokens.oauth2.refresh_token if tokens.kind is SessionKind.DI_OAUTH2 else None
        with self._uow() as uow:
            row = uow.sessions.lock_or_create(user_id, uow.now)
            retry = _retry_of(uow, row, tokens)
            if retry is not None:
                return _unchanged(uow, row, retry)
            if imported is not None and uow.sessions.imported_elsewhere(user_id, imported):
                raise RefreshTokenImportedElsewhere("session")
            uow.challenges.delete_for_user(user_id)
            return connect_tokens(
                uow,
                row,
                tokens,
                AuditedRpc.IMPORT_SESSION,
                validated=False,
                imported_refresh_token=imported,
            )

    # --- a token file: refreshed first -----------------------------------------------------

    def _import_token_file(self, user_id: str, tokens: GarminTokens) -> SessionStatusView:
        waited = False
        while True:
            retried = self._as_retry(user_id, tokens)
            if retried is not None:
                return retried
            self._refuse_if_imported_elsewhere(user_id, tokens)
            try:
                return self._refresh_and_install(user_id, tokens, waited=waited)
            except GarminRateLimited as refused:
                # Another import (or sign-in) of the account is with Garmin: maybe the same
                # file sent twice. Once it is over, this one is known for a retry, or goes on.
                if waited or not refused.another_call_in_flight:
                    raise
            self._gate.wait_for_call(user_id, _REFRESH_ENDPOINTS, self._settings.wait_seconds)
            waited = True

    def _as_retry(self, user_id: str, tokens: GarminTokens) -> SessionStatusView | None:
        """The answer to an import that repeats the session held already (None: new
        credentials). A file holding the row's own refresh token joins its refresh."""
        with self._uow() as uow:
            row = uow.sessions.lock(user_id)
            retry = _retry_of(uow, row, tokens) if row is not None else None
            if row is None or retry is None:
                return None
            status = _unchanged(uow, row, retry)
        if retry is _Retry.HELD:
            return self._refresh_held(status)
        return status

    def _refresh_and_install(
        self, user_id: str, tokens: GarminTokens, *, waited: bool
    ) -> SessionStatusView:
        """Refresh the file's pair at Garmin and install what Garmin answers, as the account's
        one call in flight (raises GarminRateLimited when another is, and InvalidArgument
        when Garmin rejects the file's refresh token: nothing changed then). `waited`: this
        import waited for another call already, so a refusal now is its answer (counted)."""
        try:
            # Held as long as a refresh claim: the Garmin call, then the pair's commit retried
            # (a retry of the same file admitted meanwhile would send the token it killed).
            with self._gate.calling(
                user_id,
                _REFRESH_ENDPOINTS,
                AuditedRpc.IMPORT_SESSION,
                exclusive=True,
                hold_seconds=self._settings.claim_lifetime_seconds,
                count_in_flight=waited,
            ) as call:
                # The same file's import may have landed between the look and the claim.
                retried = self._as_retry(user_id, tokens)
                if retried is not None:
                    call.did_not_reach(*_REFRESH_ENDPOINTS)
                    return retried
                # The file's refresh token dies in this call: a graceful stop waits for the
                # pair's commit.
                with self._refresher.in_flight.holding():
                    # Outside any transaction: nothing is locked while Garmin answers.
                    fresh = self._refresher.refresh_new(tokens)
                    # Garmin answered: a breaker this call probed closes now, for every
                    # account.
                    self._gate.answered_keeping_call(call)
                    # Still holding the account's call: a retry of this file waits for the
                    # commit.
                    return self._install_refreshed(user_id, tokens, fresh)
        except GarminSessionRejected:
            # Only a file whose import landed meanwhile (the account's call outlived by a
            # commit retried for long) is a retry; any other is dead at Garmin.
            retried = self._as_retry(user_id, tokens)
            if retried is not None:
                return retried
            log.info("user %s: token file refused at Garmin; nothing changed", user_id)
            raise _dead_file("nothing was changed") from None

    def _install_refreshed(
        self, user_id: str, imported: GarminTokens, fresh: GarminTokens
    ) -> SessionStatusView:
        """Commit the pair Garmin rotated the file's into, retried as long as the refresher
        retries its own (commit_retry_seconds): the file's refresh token is dead already, so
        losing the pair loses the user's way in."""
        since = time.monotonic()
        status = commit_retried(
            lambda: self._install(user_id, imported, fresh),
            seconds=self._settings.commit_retry_seconds,
            what="imported session",
            user_id=user_id,
        )
        self._refresher.pair_stored(time.monotonic() - since)
        return status

    def _install(
        self, user_id: str, imported: GarminTokens, fresh: GarminTokens
    ) -> SessionStatusView:
        try:
            return self._install_marked(user_id, imported, fresh, imported_from=imported)
        except RefreshTokenImportedElsewhere:
            # Another user id's import of the same token (given field by field, so Garmin was
            # not asked) committed after this one's check: the pair Garmin just rotated the
            # file's token into is the only live one, and dropping it loses the account. It
            # is stored all the same, unmarked.
            log.warning(
                "user %s: the token file was imported for another user id meanwhile; storing "
                "the pair Garmin rotated it into all the same",
                user_id,
            )
            return self._install_marked(user_id, imported, fresh, imported_from=None)

    def _install_marked(
        self,
        user_id: str,
        imported: GarminTokens,
        fresh: GarminTokens,
        *,
        imported_from: GarminTokens | None,
    ) -> SessionStatusView:
        with self._uow() as uow:
            row = uow.sessions.lock_or_create(user_id, uow.now)
            uow.challenges.delete_for_user(user_id)  # supersedes a pending login
            return connect_tokens(
                uow,
                row,
                fresh,
                AuditedRpc.IMPORT_SESSION,
                validated=True,
                rotated_away=imported.oauth2.refresh_token,
                imported_refresh_token=(
                    None if imported_from is None else imported_from.oauth2.refresh_token
                ),
            )

    def _refresh_held(self, imported: SessionStatusView) -> SessionStatusView:
        # Through the one refresher: claimed on the row, the rotated pair committed (and
        # retried into a database that refuses it) before anything else sees it.
        try:
            refreshed = self._refresher.refresh(
                imported.user_id, imported.session_version, _IMPORT_ASKER, unleased=True
            )
        except LeaseHeld:
            # Leased since: the refresh belongs to the holder (worker_full holders have the
            # refresh token this refresh would kill).
            log.info("imported session of user %s is leased; not refreshed", imported.user_id)
            return imported
        except (GarminRateLimited, GarminUnavailable) as exc:
            log.warning(
                "imported session of user %s not refreshed yet (%s); keep-alive will",
                imported.user_id,
                type(exc).__name__,
            )
            return imported
        except GarminSessionRejected:
            # The file's refresh token is the one stored, and Garmin has rejected it (the
            # refresher re-read the row first): the file is dead, and so is that session,
            # which the refresher has ended.
            log.info(
                "user %s: token file refused at Garmin; the session it held ended", imported.user_id
            )
            raise _dead_file("the session holding the same token has ended") from None
        return status_view(refreshed.row, self._uow.now())


def _dead_file(outcome: str) -> InvalidArgument:
    """A token file whose refresh token Garmin rejected: the caller's field to fix."""
    return InvalidArgument(
        [
            FieldViolation(
                "garminconnect_tokens",
                f"its refresh token is no longer valid at Garmin (an old copy?); {outcome}",
            )
        ]
    )


def _is_active_di(row: SessionRow) -> bool:
    return row.state is SessionState.ACTIVE and row.session_kind is SessionKind.DI_OAUTH2


def _retry_of(uow: UnitOfWork, locked: SessionRow, tokens: GarminTokens) -> _Retry | None:
    """Whether importing `tokens` over the user's `locked` row repeats an import of the DI
    session the row holds (None: new credentials). Garth sessions are always installed: their
    exchange rotates nothing, so a second one loses nothing. A stored session that fails to
    open is replaced, as any import would replace it."""
    if tokens.kind is not SessionKind.DI_OAUTH2 or not _is_active_di(locked):
        return None
    presented = tokens.oauth2.refresh_token
    if rotated_away(locked, presented):
        return _Retry.ROTATED_AWAY
    try:
        held = uow.sessions.open_tokens(locked).oauth2.refresh_token
    except SecretUnreadable:
        return None
    if hmac.compare_digest(held.encode(), presented.encode()):
        return _Retry.HELD
    return None


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
