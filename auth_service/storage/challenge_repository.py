"""Pending MFA challenges: implements auth_service.domain.repositories.ChallengeRepository.

A challenge holds Garmin's SSO cookies, sealed for its row (SecretBox). Never commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, update
from sqlalchemy.engine import CursorResult

from auth_service.crypto import DecryptionError
from auth_service.domain.errors import SecretUnreadable
from auth_service.domain.models import PendingMfa
from auth_service.domain.repositories import MfaChallenge
from auth_service.storage import session_rows as rows
from auth_service.storage.executor import Executor
from auth_service.storage.models import GarminMfaChallenge
from auth_service.storage.secrets import SecretBox

C: Table = cast(Table, GarminMfaChallenge.__table__)
_DIGEST = bindparam("p_digest", type_=C.c.challenge_id_sha256.type)
_BY_DIGEST = C.c.challenge_id_sha256 == _DIGEST
_FIND = C.select().where(_BY_DIGEST)
_LOCK = _FIND.with_for_update()
_CLAIM = update(C).where(_BY_DIGEST).values(claimed_until=bindparam("p_until"))
_RELEASE = update(C).where(_BY_DIGEST).values(claimed_until=None)
_WRONG_CODE = (
    update(C).where(_BY_DIGEST).values(claimed_until=None, failed_attempts=C.c.failed_attempts + 1)
)
_ATTEMPT = update(C).where(_BY_DIGEST).values(failed_attempts=C.c.failed_attempts + 1)


class SqlChallengeRepository:
    """Pending MFA challenges on one SQLAlchemy session."""

    def __init__(self, session: Executor, box: SecretBox) -> None:
        self.session = session
        self.box = box

    def find(self, challenge_id_sha256: str) -> MfaChallenge | None:
        return self._one(_FIND, challenge_id_sha256)

    def lock(self, challenge_id_sha256: str) -> MfaChallenge | None:
        return self._one(_LOCK, challenge_id_sha256)

    def _one(self, query: Any, challenge_id_sha256: str) -> MfaChallenge | None:
        row = self.session.execute(query, {"p_digest": challenge_id_sha256}).first()
        if row is None:
            return None
        return MfaChallenge(
            challenge_id_sha256=row.challenge_id_sha256,
            user_id=row.user_id,
            failed_attempts=row.failed_attempts,
            claimed_until=row.claimed_until,
            expires_at=row.expires_at,
            sealed_pending=row.pending_ciphertext,
            account=row.account_digest,
        )

    def add(
        self,
        challenge_id_sha256: str,
        user_id: str,
        pending: PendingMfa,
        *,
        expires_at: datetime,
        now: datetime,
        account: str | None = None,
    ) -> None:
        self.session.execute(
            insert(C).values(
                challenge_id_sha256=challenge_id_sha256,
                user_id=user_id,
                pending_ciphertext=self.box.seal_pending(challenge_id_sha256, user_id, pending),
                mfa_method=pending.mfa_method_shown,
                failed_attempts=0,
                expires_at=expires_at,
                created_at=now,
                account_digest=account,
            )
        )

    def open_pending(self, challenge: MfaChallenge) -> PendingMfa:
        try:
            return self.box.open_pending(
                challenge.challenge_id_sha256, challenge.user_id, challenge.sealed_pending
            )
        except DecryptionError as exc:
            raise SecretUnreadable(str(exc)) from None

    def claim(self, challenge_id_sha256: str, until: datetime) -> None:
        self.session.execute(_CLAIM, {"p_digest": challenge_id_sha256, "p_until": until})

    def release_claim(self, challenge_id_sha256: str, *, wrong_code: bool) -> None:
        statement = _WRONG_CODE if wrong_code else _RELEASE
        self.session.execute(statement, {"p_digest": challenge_id_sha256})

    def count_attempt(self, challenge_id_sha256: str) -> None:
        self.session.execute(_ATTEMPT, {"p_digest": challenge_id_sha256})

    def delete(self, challenge_id_sha256: str) -> None:
        self.session.execute(delete(C).where(_BY_DIGEST), {"p_digest": challenge_id_sha256})

    def delete_for_user(self, user_id: str) -> None:
        self.session.execute(delete(C).where(C.c.user_id == user_id))

    def delete_expired(self, now: datetime) -> int:
        """Challenges past their expiry that no SubmitMfa still holds."""
        result = self.session.execute(delete(C).where(~rows.LIVE_CHALLENGE_ROW), {"p_now": now})
        return cast(CursorResult[Any], result).rowcount or 0
