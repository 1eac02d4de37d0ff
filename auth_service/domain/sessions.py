"""Connecting users: Login, SubmitMfa, GetStatus, ImportSession, DeleteSession, ListSessions.

Transactions are short and never span a call to Garmin: read what is needed, commit, call
Garmin, then apply the answer conditionally (the row may have changed meanwhile).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from auth_service.clock import Clock
from auth_service.config import LoginSettings
from auth_service.crypto import DecryptionError
from auth_service.domain import audit, page_tokens, validation
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    FieldViolation,
    GarminSessionRejected,
    InvalidArgument,
    LeaseHeld,
    LoginRateLimited,
    MfaChallengeBusy,
    MfaChallengeNotFound,
    MfaCodeRejected,
    SessionNotActive,
)
from auth_service.domain.models import (
    GarminTokens,
    LoginNeedsMfa,
    PendingMfa,
    SessionState,
    SessionStatusView,
)
from auth_service.domain.page_tokens import decode_page_token, encode_page_token
from auth_service.domain.ports import GarminUpstream
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge
from auth_service.storage.repository import (
    ChallengeRepository,
    SessionRepository,
    ThrottleRepository,
)
from auth_service.storage.secrets import SecretBox
from auth_service.storage.views import live_lease, status_view

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# How long one replica may hold a challenge while it submits the code to Garmin.
MFA_CLAIM_SECONDS = 120.0


@dataclass(frozen=True)
class LoginAnswer:
    """What Login answers: a status, plus the challenge when Garmin wants an MFA code."""

    status: SessionStatusView
    mfa_challenge_id: str | None = None
    mfa_method: str | None = None
    mfa_expires_at: datetime | None = None


@dataclass(frozen=True)
class SessionPage:
    """One page of ListSessions."""

    sessions: list[SessionStatusView]
    next_page_token: str


def _challenge_digest(challenge_id: str) -> str:
    return hashlib.sha256(challenge_id.encode()).hexdigest()


def end_lease(row: GarminAuthenticationState) -> None:
    """Forget the row's lease: its lease_id is dead from now on (fencing_token stays)."""
    row.lease_id = None
    row.lease_holder = None
    row.lease_acquired_at = None
    row.lease_expires_at = None


def install_tokens(
    row: GarminAuthenticationState,
    box: SecretBox,
    tokens: GarminTokens,
    now: datetime,
    *,
    validated: bool,
) -> None:
    """Make `tokens` the user's ACTIVE session (login, MFA or import).

    The newest credentials win: a live lease on the old session ends, so its holder's later
    reports answer LEASE_LOST instead of overwriting what the user just connected.
    """
    row.session_ciphertext = box.seal_tokens(row.user_id, tokens)
    row.session_version += 1
    row.state = SessionState.ACTIVE
    row.access_token_expires_at = tokens.oauth2.expires_at
    row.last_validated_at = now if validated else None
    row.invalidated_reason = None
    row.invalidated_at = None
    row.updated_at = now
    end_lease(row)


def invalidate(row: GarminAuthenticationState, reason: str, now: datetime) -> None:
    """Garmin definitely rejected the session: AUTH_EXPIRED, secrets wiped, lease ended."""
    row.state = SessionState.AUTH_EXPIRED
    row.session_ciphertext = None
    row.access_token_expires_at = None
    row.session_version += 1
    row.invalidated_reason = reason[: validation.MAX_REASON_LENGTH]
    row.invalidated_at = now
    row.updated_at = now
    end_lease(row)


class SessionService:
    """The connect-a-user use cases."""

    def __init__(
        self,
        db: sessionmaker[Session],
        box: SecretBox,
        upstream: GarminUpstream,
        clock: Clock,
        settings: LoginSettings,
        garth_token_parser: Callable[[str], GarminTokens],
    ) -> None:
        self._db = db
        self._box = box
        self._upstream = upstream
        self._clock = clock
        self._settings = settings
        self._parse_garth_token = garth_token_parser

    # --- Login and MFA -----------------------------------------------------------------

    def login(self, user_id: str, email: str, password: str) -> LoginAnswer:
        validation.raise_if_any(
            validation.check_user_id(user_id),
            validation.check_email(email),
            validation.check_password(password),
        )
        self._consume_login_attempt(user_id)
        result = self._upstream.login(email, password)
        now = self._clock.now()
        with self._db.begin() as session:
            sessions, challenges = SessionRepository(session), ChallengeRepository(session)
            row = sessions.get_or_create_for_update(user_id, now)
            challenges.delete_for_user(user_id)  # a new login supersedes any pending one
            if not isinstance(result, LoginNeedsMfa):
                status = self._connect(
                    session, row, result.tokens, now, rpc=AuditedRpc.LOGIN, validated=True
                )
                return LoginAnswer(status=status)
            challenge_id = secrets.token_urlsafe(32)
            digest = _challenge_digest(challenge_id)
            expires_at = now + timedelta(seconds=self._settings.mfa_challenge_ttl_seconds)
            challenges.add(
                GarminMfaChallenge(
                    challenge_id_sha256=digest,
                    user_id=user_id,
                    pending_ciphertext=self._box.seal_pending(digest, user_id, result.pending),
                    mfa_method=result.pending.mfa_method[:32],
                    failed_attempts=0,
                    expires_at=expires_at,
                    created_at=now,
                )
            )
            if row.state != SessionState.ACTIVE:
                # A working session stays in force until the new login completes.
                row.state = SessionState.MFA_PENDING
            row.updated_at = now
            audit.record(
                session,
                rpc=AuditedRpc.LOGIN,
                now=now,
                outcome=audit.MFA_REQUIRED,
                user_id=user_id,
            )
            return LoginAnswer(
                status=status_view(row, now),
                mfa_challenge_id=challenge_id,
                mfa_method=result.pending.mfa_method,
                mfa_expires_at=expires_at,
            )

    def _connect(
        self,
        session: Session,
        row: GarminAuthenticationState,
        tokens: GarminTokens,
        now: datetime,
        *,
        rpc: AuditedRpc,
        validated: bool,
    ) -> SessionStatusView:
        """Make `tokens` the user's ACTIVE session (Login, SubmitMfa, ImportSession) and
        record it in the same transaction, naming the live lease it ended, if any."""
        ended = live_lease(row, now)
        install_tokens(row, self._box, tokens, now, validated=validated)
        audit.record(session, rpc=rpc, now=now, outcome=audit.OK, user_id=row.user_id, lease=ended)
        return status_view(row, now)

    def _consume_login_attempt(self, user_id: str) -> None:
        now = self._clock.now()
        refusal: LoginRateLimited | None = None
        with self._db.begin() as session:
            wait = ThrottleRepository(session).consume(
                user_id,
                now,
                limit=self._settings.limit,
                window=timedelta(seconds=self._settings.window_seconds),
            )
            if wait is not None:
                refusal = LoginRateLimited(
                    f"too many logins for this user; retry in {wait.total_seconds():.0f}s",
                    retry_after_seconds=wait.total_seconds(),
                )
                audit.record(
                    session,
                    rpc=AuditedRpc.LOGIN,
                    now=now,
                    outcome=audit.outcome_of(refusal),
                    user_id=user_id,
                )
        if refusal is not None:
            raise refusal

    def submit_mfa(self, mfa_challenge_id: str, code: str) -> SessionStatusView:
        validation.raise_if_any(
            validation.check_opaque_id(mfa_challenge_id, "mfa_challenge_id"),
            validation.check_mfa_code(code),
        )
        digest = _challenge_digest(mfa_challenge_id)
        user_id, pending, claimed_until = self._claim_challenge(digest)
        try:
            tokens = self._upstream.resume_mfa(pending, code)
        except MfaCodeRejected as rejected:
            self._count_wrong_code(digest, claimed_until, rejected)
            raise
        except BaseException:
            self._release_claim(digest, claimed_until)
            raise
        now = self._clock.now()
        with self._db.begin() as session:
            challenge = ChallengeRepository(session).get_for_update(digest)
            if challenge is None or challenge.claimed_until != claimed_until:
                # Deleted or superseded while Garmin answered: the user's newer intent wins.
                raise MfaChallengeNotFound("the MFA challenge was superseded or deleted")
            ChallengeRepository(session).delete(challenge)
            row = SessionRepository(session).get_or_create_for_update(user_id, now)
            return self._connect(
                session, row, tokens, now, rpc=AuditedRpc.SUBMIT_MFA, validated=True
            )

    def _claim_challenge(self, digest: str) -> tuple[str, PendingMfa, datetime]:
        now = self._clock.now()
        with self._db.begin() as session:
            challenges = ChallengeRepository(session)
            challenge = challenges.get_for_update(digest)
            if challenge is None or challenge.expires_at <= now:
                if challenge is not None:
                    challenges.delete(challenge)
                    SessionRepository(session).settle_abandoned_mfa(now, challenge.user_id)
                raise MfaChallengeNotFound("no such MFA challenge (expired, used or superseded)")
            if challenge.claimed_until is not None and challenge.claimed_until > now:
                raise MfaChallengeBusy("another SubmitMfa for this challenge is in progress")
            try:
                pending = self._box.open_pending(
                    digest, challenge.user_id, challenge.pending_ciphertext
                )
            except DecryptionError:
                log.exception("MFA challenge failed to decrypt; dropping it")
                challenges.delete(challenge)
                raise MfaChallengeNotFound("no such MFA challenge") from None
            claimed_until = now + timedelta(seconds=MFA_CLAIM_SECONDS)
            challenge.claimed_until = claimed_until
            return challenge.user_id, pending, claimed_until

    def _count_wrong_code(
        self, digest: str, claimed_until: datetime, rejected: MfaCodeRejected
    ) -> None:
        now = self._clock.now()
        with self._db.begin() as session:
            challenges = ChallengeRepository(session)
            challenge = challenges.get_for_update(digest)
            if challenge is None or challenge.claimed_until != claimed_until:
                return
            challenge.failed_attempts += 1
            challenge.claimed_until = None
            audit.record(
                session,
                rpc=AuditedRpc.SUBMIT_MFA,
                now=now,
                outcome=audit.outcome_of(rejected),
                user_id=challenge.user_id,
            )
            if challenge.failed_attempts >= self._settings.mfa_max_wrong_codes:
                challenges.delete(challenge)
                SessionRepository(session).settle_abandoned_mfa(now, challenge.user_id)

    def _release_claim(self, digest: str, claimed_until: datetime) -> None:
        with self._db.begin() as session:
            challenge = ChallengeRepository(session).get_for_update(digest)
            if challenge is not None and challenge.claimed_until == claimed_until:
                challenge.claimed_until = None

    # --- Status --------------------------------------------------------------------------

    def get_status(self, user_id: str, *, validate: bool) -> SessionStatusView:
        validation.raise_if_any(validation.check_user_id(user_id))
        now = self._clock.now()
        with self._db.begin() as session:
            sessions = SessionRepository(session)
            sessions.settle_abandoned_mfa(now, user_id)
            row = sessions.get(user_id)
            if row is None:
                return SessionStatusView(user_id=user_id, state=SessionState.NOT_CONNECTED)
            if not validate:
                return status_view(row, now)
            if row.state != SessionState.ACTIVE or row.session_ciphertext is None:
                raise SessionNotActive(f"the session is {row.state.value}; nothing to validate")
            tokens = self._box.open_tokens(user_id, row.session_ciphertext)
            version, lease = row.session_version, live_lease(row, now)
        if lease is not None and tokens.oauth2.expires_at <= now:
            raise LeaseHeld(
                f"the session is leased by {lease.holder!r} until {lease.expires_at.isoformat()} "
                "and its access token needs a refresh, which belongs to the lease holder"
            )
        return self._validate(user_id, tokens, version, allow_refresh=lease is None)

    def _validate(
        self, user_id: str, tokens: GarminTokens, version: int, *, allow_refresh: bool
    ) -> SessionStatusView:
        try:
            current = self._upstream.validate(tokens, allow_refresh=allow_refresh)
        except GarminSessionRejected as exc:
            return self._apply_validation(user_id, version, None, rejected=exc.message)
        return self._apply_validation(user_id, version, current if current is not tokens else None)

    def _apply_validation(
        self,
        user_id: str,
        version: int,
        refreshed: GarminTokens | None,
        *,
        rejected: str | None = None,
    ) -> SessionStatusView:
        now = self._clock.now()
        with self._db.begin() as session:
            row = SessionRepository(session).get(user_id, for_update=True)
            assert row is not None  # rows are never deleted
            if row.session_version == version and row.state == SessionState.ACTIVE:
                # Unchanged since we read it: Garmin's answer is about this very session.
                ended, outcome = None, audit.OK
                if rejected is not None:
                    ended = live_lease(row, now)  # invalidating ends it
                    invalidate(row, f"validation: {rejected}", now)
                    outcome = audit.SESSION_INVALIDATED
                else:
                    if refreshed is not None:
                        row.session_ciphertext = self._box.seal_tokens(user_id, refreshed)
                        row.session_version += 1
                        row.access_token_expires_at = refreshed.oauth2.expires_at
                        outcome = audit.SESSION_REFRESHED
                    row.last_validated_at = now
                    row.updated_at = now
                audit.record(
                    session,
                    rpc=AuditedRpc.GET_STATUS,
                    now=now,
                    outcome=outcome,
                    user_id=user_id,
                    lease=ended,
                )
            return status_view(row, now)

    # --- Import, delete, list ------------------------------------------------------------

    def import_session(
        self, user_id: str, *, tokens: GarminTokens | None, garth_token: str | None
    ) -> SessionStatusView:
        violations = validation.check_user_id(user_id)
        if tokens is None and garth_token is None:
            violations.append(FieldViolation("source", "set session or garth_token"))
        elif tokens is None and garth_token is not None:
            try:
                tokens = self._parse_garth_token(garth_token)
            except ValueError as exc:
                violations.append(FieldViolation("garth_token", str(exc)))
        validation.raise_if_any(violations)
        assert tokens is not None
        now = self._clock.now()
        with self._db.begin() as session:
            row = SessionRepository(session).get_or_create_for_update(user_id, now)
            ChallengeRepository(session).delete_for_user(user_id)
            return self._connect(
                session, row, tokens, now, rpc=AuditedRpc.IMPORT_SESSION, validated=False
            )

    def delete_session(self, user_id: str) -> None:
        validation.raise_if_any(validation.check_user_id(user_id))
        now = self._clock.now()
        with self._db.begin() as session:
            ChallengeRepository(session).delete_for_user(user_id)
            row = SessionRepository(session).get(user_id, for_update=True)
            if row is None:
                return
            ended = live_lease(row, now)
            # The row stays as NOT_CONNECTED so fencing tokens keep growing if the user returns.
            end_lease(row)
            row.state = SessionState.NOT_CONNECTED
            if row.session_ciphertext is not None:
                row.session_version += 1
            row.session_ciphertext = None
            row.access_token_expires_at = None
            row.last_validated_at = row.last_synced_at = row.synced_through = None
            row.last_sync_attempt_at = None
            row.invalidated_reason = row.invalidated_at = None
            row.updated_at = now
            audit.record(
                session,
                rpc=AuditedRpc.DELETE_SESSION,
                now=now,
                outcome=audit.OK,
                user_id=user_id,
                lease=ended,
            )

    def list_sessions(
        self, *, page_size: int, page_token: str, state: SessionState | None
    ) -> SessionPage:
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(
                [FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")]
            )
        after = _decode_page_token(page_token, state)
        limit = page_size or DEFAULT_PAGE_SIZE
        now = self._clock.now()
        with self._db.begin() as session:
            sessions = SessionRepository(session)
            sessions.settle_abandoned_mfa(now)
            rows = sessions.list_page(after_user_id=after, state=state, limit=limit + 1)
            views = [status_view(row, now) for row in rows[:limit]]
        next_token = _encode_page_token(views[-1].user_id, state) if len(rows) > limit else ""
        return SessionPage(sessions=views, next_page_token=next_token)


def _encode_page_token(after_user_id: str, state: SessionState | None) -> str:
    return encode_page_token({"after": after_user_id}, state.value if state else None)


def _decode_page_token(token: str, state: SessionState | None) -> str | None:
    position = decode_page_token(token, state.value if state else None)
    if position is None:
        return None
    after = position.get("after")
    # Page tokens are not signed: a position must look like one we issued (a stored user id),
    # or a crafted one would reach the query (NUL bytes fail on PostgreSQL).
    if not isinstance(after, str) or validation.check_user_id(after):
        raise page_tokens.not_ours()
    return after
