"""The session rows: reads as callers see them, and the connect/disconnect/validate changes.

Implements auth_service.domain.repositories.SessionRepository. Every change is one UPDATE
built from auth_service.storage.session_rows and returns the row as written; rows that are
changed after being read are read `FOR UPDATE` (PostgreSQL; SQLite serialises writers
itself), so concurrent replicas never lose an update. Never commits.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Select, Update, case, exists, select, text, update
from sqlalchemy.exc import IntegrityError

from auth_service.crypto import DecryptionError
from auth_service.domain.errors import RefreshTokenImportedElsewhere, SecretUnreadable
from auth_service.domain.models import GarminTokens, SessionKind, SessionState
from auth_service.domain.views import SessionRow, imported_refresh_digest, rotated_history
from auth_service.storage import session_rows as rows
from auth_service.storage.executor import Executor
from auth_service.storage.models import IMPORTED_AND_ACTIVE
from auth_service.storage.secrets import SecretBox
from auth_service.storage.upsert import insert_ignoring_conflict
from auth_service.storage.user_scope import starts_with

log = logging.getLogger(__name__)

T = rows.T
_BY_USER = T.c.user_id == rows.USER_ID

_FIND = rows.AS_SEEN.where(_BY_USER)
_READ = T.select().where(_BY_USER)
_LOCK = _READ.with_for_update()
# Every statement that stores a new blob names the version it replaces (p_version): the blob
# was sealed for the one after it (issue 14), and a row that moved on meanwhile is not hit.
_INSTALL = (
    update(T)
    .where(_BY_USER, T.c.session_version == rows.VERSION)
    .values(rows.INSTALLED)
    .returning(*T.c)
)
# The partial unique index ix_garmin_authentication_state_imported_refresh serves it: its
# predicate spelled as the index's (a bound state would not prove it to a generic plan).
_IMPORTED_ELSEWHERE = select(
    exists().where(
        text(IMPORTED_AND_ACTIVE),
        T.c.imported_refresh_sha256 == rows.IMPORTED_REFRESH_SHA256,
        T.c.user_id != rows.USER_ID,
    )
)
_MFA_PENDING = (
    update(T)
    .where(_BY_USER)
    .values(
        # A working session stays in force until the new login completes.
        state=case((T.c.state == rows.ACTIVE, T.c.state), else_=SessionState.MFA_PENDING),
        updated_at=rows.NOW,
    )
    .returning(*T.c)
)
_DISCONNECT = update(T).where(_BY_USER).values(rows.DISCONNECTED).returning(*T.c)
# GetStatus(validate): Garmin's answer is about session p_version; a login or import that
# landed meanwhile wins.
_AT_VERSION = (_BY_USER, T.c.session_version == rows.VERSION, T.c.state == rows.ACTIVE)
_VALIDATED = update(T).where(*_AT_VERSION).values(rows.VALIDATED).returning(*T.c)
_REFRESHED = update(T).where(*_AT_VERSION).values(rows.REFRESHED).returning(*T.c)
_INVALIDATE = update(T).where(*_AT_VERSION).values(rows.INVALIDATED).returning(*T.c)
# The first refusal in doubt since the tokens changed is kept; later ones leave it.
_DOUBTFUL_REFUSAL = (
    update(T)
    .where(*_AT_VERSION, T.c.first_doubtful_refusal_at.is_(None))
    .values(rows.DOUBTFUL_REFUSAL_NOTED)
)
_SETTLE = (
    update(T)
    .where(rows.ABANDONED_MFA)
    .values(state=rows.SETTLED_STATE, updated_at=rows.NOW)
    .returning(T.c.user_id)
    .execution_options(synchronize_session=False)
)
_LOCK_ABANDONED = (
    select(T.c.user_id).where(rows.ABANDONED_MFA).order_by(T.c.user_id).with_for_update()
)


class SqlSessionRepository:
    """The garmin_authentication_state rows on one SQLAlchemy session."""

    def __init__(self, session: Executor, box: SecretBox) -> None:
        self.session = session
        self.box = box

    # --- reads -------------------------------------------------------------------------

    def find(self, user_id: str, now: datetime) -> SessionRow | None:
        return self._one(_FIND, p_user_id=user_id, p_now=now)

    def list_page(
        self,
        *,
        after_user_id: str | None,
        state: SessionState | None,
        kind: SessionKind | None = None,
        limit: int,
        now: datetime,
        user_id_prefix: str | None = None,
    ) -> list[SessionRow]:
        """Keyset pagination by user_id: stable under inserts. `kind` keeps the rows that
        store a session of that kind (only ACTIVE rows store one)."""
        query = rows.AS_SEEN.order_by(T.c.user_id)
        if after_user_id is not None:
            query = query.where(T.c.user_id > after_user_id)
        if user_id_prefix is not None:
            query = query.where(starts_with(T.c.user_id, user_id_prefix))
        if state is not None:
            query = query.where(rows.seen_in(state))
        if kind is not None:
            query = query.where(T.c.session_kind == kind)
        result = self.session.execute(query.limit(limit), {"p_now": now}).all()
        return cast("list[SessionRow]", result)

    def lock(self, user_id: str) -> SessionRow | None:
        return self._one(_LOCK, p_user_id=user_id)

    def lock_or_create(self, user_id: str, now: datetime) -> SessionRow:
        insert_ignoring_conflict(
            self.session,
            T,
            {
                "user_id": user_id,
                "state": SessionState.NOT_CONNECTED,
                "session_version": 0,
                "fencing_token": 0,
                "created_at": now,
                "updated_at": now,
            },
        )
        row = self.lock(user_id)
        assert row is not None  # inserted above or by a racing replica; rows are never deleted
        return row

    def open_tokens(self, row: SessionRow) -> GarminTokens:
        if row.session_ciphertext is None:
            raise SecretUnreadable("the row holds no session")
        try:
            return self.box.open_tokens(row.user_id, row.session_version, row.session_ciphertext)
        except DecryptionError as exc:
            # An operator's problem (a key missing, or the database altered): say so in the
            # log too. The message names the key id at most, never key material.
            log.warning("the stored session of user %s fails to decrypt: %s", row.user_id, exc)
            raise SecretUnreadable(
                f"the stored session fails to decrypt ({exc}); log in again"
            ) from None

    # --- changes -----------------------------------------------------------------------

    def install_tokens(
        self,
        locked: SessionRow,
        tokens: GarminTokens,
        now: datetime,
        *,
        validated: bool,
        rotated_away: str | None = None,
        imported_refresh_token: str | None = None,
        exchanged_ticket_sha256: str | None = None,
    ) -> SessionRow:
        user_id = locked.user_id
        try:
            row = self._one(
                _INSTALL,
                **self.sealed_over(locked.session_version, user_id, tokens),
                p_user_id=user_id,
                p_now=now,
                p_validated_at=now if validated else None,
                p_rotated_refresh_sha256=(
                    rotated_history(None, rotated_away) if rotated_away is not None else None
                ),
                p_imported_refresh_sha256=(
                    None
                    if imported_refresh_token is None
                    else imported_refresh_digest(imported_refresh_token)
                ),
                p_exchanged_ticket_sha256=exchanged_ticket_sha256,
            )
        except IntegrityError:
            # The statement sets no other unique column: another user id's import of the
            # same refresh token committed after this import's check
            # (ix_garmin_authentication_state_imported_refresh). The transaction is over.
            if imported_refresh_token is None:
                raise
            raise RefreshTokenImportedElsewhere("refresh_token") from None
        assert row is not None  # the use case locked or created it in this transaction
        return row

    def imported_elsewhere(self, user_id: str, refresh_token: str) -> bool:
        found = self.session.execute(
            _IMPORTED_ELSEWHERE,
            {
                "p_user_id": user_id,
                "p_imported_refresh_sha256": imported_refresh_digest(refresh_token),
            },
        ).scalar()
        return bool(found)

    def mark_mfa_pending(self, user_id: str, now: datetime) -> SessionRow:
        row = self._one(_MFA_PENDING, p_user_id=user_id, p_now=now)
        assert row is not None  # the use case locked or created it in this transaction
        return row

    def disconnect(self, user_id: str, now: datetime) -> SessionRow | None:
        return self._one(_DISCONNECT, p_user_id=user_id, p_now=now)

    def store_validation(self, user_id: str, *, version: int, now: datetime) -> SessionRow | None:
        return self._one(_VALIDATED, p_user_id=user_id, p_version=version, p_now=now)

    def store_rotated(
        self,
        user_id: str,
        *,
        version: int,
        tokens: GarminTokens,
        now: datetime,
        keepalive_not_before: datetime | None,
        replaced: SessionRow,
    ) -> SessionRow | None:
        """RefreshRepository.store_rotated's statement (session_rows.REFRESHED)."""
        sealed = self.sealed_over(
            version, user_id, tokens, keepalive_not_before=keepalive_not_before
        )
        # sealed_over names the version too (the seal binds it).
        params = {"p_user_id": user_id, "p_version": version, "p_now": now}
        return self._one(
            _REFRESHED, **{**params, **sealed, **self.rotated_over(version, replaced, tokens)}
        )

    def invalidate(
        self, user_id: str, *, version: int, reason: str, now: datetime
    ) -> SessionRow | None:
        return self._one(
            _INVALIDATE,
            p_user_id=user_id,
            p_version=version,
            p_reason=rows.reason_param(reason),
            p_now=now,
        )

    def note_doubtful_refusal(self, user_id: str, *, version: int, now: datetime) -> None:
        self.session.execute(
            _DOUBTFUL_REFUSAL, {"p_user_id": user_id, "p_version": version, "p_now": now}
        )

    def settle_abandoned_mfa(self, now: datetime, user_id: str | None = None) -> list[str]:
        if user_id is None:
            # Lock the candidates first, then settle in a statement of its own: PostgreSQL
            # re-checks a row it waited for against the waiting statement's snapshot, in which
            # the live challenge a concurrent Login committed with the row is missing. The
            # second statement's snapshot has it, so that row stays MFA_PENDING. (Every other
            # writer locks the user's row before deciding.)
            locked = self.session.execute(_LOCK_ABANDONED, {"p_now": now}).scalars().all()
            if not locked:
                return []
            result = self.session.execute(_SETTLE.where(T.c.user_id.in_(locked)), {"p_now": now})
        else:
            result = self.session.execute(
                _SETTLE.where(_BY_USER), {"p_now": now, "p_user_id": user_id}
            )
        return list(result.scalars())

    # --- plumbing ----------------------------------------------------------------------

    def locked_version(self, user_id: str) -> int | None:
        """The session version of the user's row (None: no row), locked for this transaction
        (PostgreSQL; SQLite's writer holds the database), so the version a blob is sealed
        for cannot move before the blob is stored."""
        row = self.lock(user_id)
        return None if row is None else row.session_version

    def sealed_over(
        self,
        version: int,
        user_id: str,
        tokens: GarminTokens,
        *,
        keepalive_not_before: datetime | None = None,
    ) -> dict[str, Any]:
        """The parameters that store `tokens` in the user's row now at `version`: sealed for
        that row at the version the store makes it (version + 1), with p_version so the
        statement only hits the row still at `version`; and, for a refresh
        (session_rows.REFRESHED), when keep-alive may pick the session again (None: when
        due)."""
        return {
            "p_version": version,
            "p_ciphertext": self.box.seal_tokens(user_id, version + 1, tokens),
            "p_tokens_expire_at": tokens.oauth2.expires_at,
            "p_kind": tokens.kind,
            # Only a DI session dies with its refresh token; garth's lives on its OAuth1.
            "p_refresh_expires_at": (
                tokens.oauth2.refresh_token_expires_at
                if tokens.kind is SessionKind.DI_OAUTH2
                else None
            ),
            "p_keepalive_not_before": keepalive_not_before,
        }

    def rotated_over(
        self, version: int, replaced: SessionRow, tokens: GarminTokens
    ) -> dict[str, Any]:
        """p_rotated_refresh_sha256 of a refresh stored over the user's row at `version`
        (session_rows.REFRESHED): the digest of the DI refresh token the row holds there,
        which that refresh rotated away, before the ones the row kept (views.rotated_history).
        From `replaced`, the row as the caller read or locked it: the store's UPDATE hits the
        row only at `version`, and at one version the row holds one session.

        None for a garth session (its exchange rotates nothing) and for a row that moved on
        (the store does not hit it); the row's kept digests alone for tokens that fail to
        open: the digests only let an import retry be recognised, and a rotated pair must
        never be dropped for want of one (the refresh opened them moments ago: only an
        altered row fails). The kept digests alone, too, when `tokens` (the pair stored)
        carry the same refresh token: nothing was rotated away, and a digest of a live token
        would make it look dead (a holder's report echoing the pair it was given)."""
        row = replaced
        if row.session_version != version or row.session_kind is not SessionKind.DI_OAUTH2:
            return {"p_rotated_refresh_sha256": None}
        try:
            replaced_token = self.open_tokens(row).oauth2.refresh_token
        except SecretUnreadable:
            return {"p_rotated_refresh_sha256": row.rotated_refresh_sha256}
        if hmac.compare_digest(replaced_token.encode(), tokens.oauth2.refresh_token.encode()):
            return {"p_rotated_refresh_sha256": row.rotated_refresh_sha256}
        return {
            "p_rotated_refresh_sha256": rotated_history(row.rotated_refresh_sha256, replaced_token)
        }

    def _one(self, statement: Update | Select[Any], **params: Any) -> SessionRow | None:
        row: Row[Any] | None = self.session.execute(statement, params).first()
        return cast("SessionRow | None", row)
