"""SQLAlchemy models. Every timestamp is timezone-aware UTC.

Rows of `garmin_authentication_state` are never deleted: DeleteSession wipes a row back to
NOT_CONNECTED and keeps `fencing_token`, so a user who disconnects and reconnects still sees
fencing tokens that only grow (a sink that recorded token 7 must never be handed token 1).

Rows of `garmin_audit_event` are only ever inserted (in the transaction of the change they
record) and deleted by `prune_audit` once older than the retention.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from auth_service.domain.audit import CALLER_LENGTH
from auth_service.domain.models import SessionKind, SessionState
from auth_service.domain.signin_accounts import ACCOUNT_DIGEST_LENGTH

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

USER_ID_LENGTH = 128
LEASE_ID_LENGTH = 64
HOLDER_LENGTH = 256
REASON_LENGTH = 512
RPC_LENGTH = 64
OUTCOME_CODE_LENGTH = 32
OUTCOME_REASON_LENGTH = 64
CLAIM_ID_LENGTH = 64
ENDPOINT_LENGTH = 32
SHA256_HEX_LENGTH = 64
# The rows whose imported refresh token no other row may share.
IMPORTED_AND_ACTIVE = "state = 'ACTIVE' AND imported_refresh_sha256 IS NOT NULL"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that always comes back as UTC, SQLite included.

    SQLite stores no offset, so values are normalised to UTC on the way in and tagged UTC on
    the way out; PostgreSQL stores `timestamptz`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 - SQLAlchemy passes it; UTC needs no per-dialect care
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class GarminAuthenticationState(Base):
    """One row per user: the user's Garmin session, its lease and its sync bookkeeping."""

    __tablename__ = "garmin_authentication_state"

    user_id: Mapped[str] = mapped_column(String(USER_ID_LENGTH), primary_key=True)
    state: Mapped[SessionState] = mapped_column(
        Enum(
            SessionState,
            name="session_state",
            native_enum=False,
            create_constraint=True,
            length=16,
            validate_strings=True,
        )
    )
    # AES-256-GCM blob (auth_service.crypto) of the GarminTokens; NULL whenever the row holds
    # no usable session (NOT_CONNECTED, MFA_PENDING without an earlier session, AUTH_EXPIRED).
    session_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Grows by one every time the stored tokens change (login, import, refresh, wipe).
    session_version: Mapped[int] = mapped_column(BigInteger, default=0)
    access_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # The lease. lease_id holds the SHA-256 hex digest of the lease id, never the id (only
    # its holder has that; auth_service.domain.lease_ids). NULL when nobody holds the
    # session; a row whose lease_expires_at has passed is free even if lease_id is still set
    # (takeover overwrites it).
    lease_id: Mapped[str | None] = mapped_column(String(LEASE_ID_LENGTH), unique=True)
    lease_holder: Mapped[str | None] = mapped_column(String(HOLDER_LENGTH))
    lease_acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The token of the latest grant for this user; only ever grows, survives DeleteSession.
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=0)

    last_validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    synced_through: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_sync_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    invalidated_reason: Mapped[str | None] = mapped_column(String(REASON_LENGTH))
    invalidated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    # Added by migration 0004, so last (the order SQLite keeps after ALTER TABLE).
    # Which sign-in the stored session comes from; NULL whenever no session is stored.
    session_kind: Mapped[SessionKind | None] = mapped_column(
        Enum(
            SessionKind,
            name="session_kind",
            native_enum=False,
            create_constraint=True,
            length=16,
            validate_strings=True,
        )
    )
    # DI sessions: when the refresh token dies unless used (NULL: unknown, e.g. just imported
    # from a token file, which makes it due for keep-alive at once). NULL for garth sessions.
    refresh_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Added by migration 0005. A claim on the session's next refresh (random id, expiry): one
    # replica at a time calls Garmin for it, because DI refresh tokens rotate and a second
    # refresh with the same token loses the account. Cleared whenever the tokens change.
    refresh_claim_id: Mapped[str | None] = mapped_column(String(CLAIM_ID_LENGTH))
    refresh_claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Added by migration 0007. The authenticated caller (callers file name) that obtained the
    # lease: holder calls from any other caller answer LEASE_LOST, so a lease id that leaked
    # to another worker is of no use to it. NULL whenever lease_id is.
    lease_caller: Mapped[str | None] = mapped_column(String(CALLER_LENGTH))

    # Added by migration 0011. Keep-alive does not pick the session before then (NULL:
    # whenever it is due). Set with every pair the service's own refresh stores (half the
    # refresh token's time left, at most half the keep-alive window: auth_service.domain.
    # policies.keepalive_not_before) and after keep-alive's refresh failed; NULL again with
    # a sign-in, an import or a holder's reported pair. So a refresh that leaves the expiry
    # inside the window is not repeated on every pass, and sessions that always fail do not
    # keep the others waiting.
    keepalive_not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Added by migration 0012. Digests of the DI refresh tokens rotations replaced (the
    # service's own refreshes, a holder's reported one, an imported token file's first
    # refresh), newest first: the first 16 hex digits of each one's SHA-256, at most 4: the
    # latest three and the session's first (domain.views.rotated_history), never the tokens
    # (high-entropy, so a digest can be neither inverted nor guessed, as lease ids;
    # auth_service.domain.lease_ids). An ImportSession presenting one of those tokens is a
    # client's retry of an import the service has refreshed since: the token is dead at
    # Garmin, and presenting it again would be a reuse. The imported file's digest after an
    # import of a token file; NULL after a sign-in, another import, an invalidation or a
    # disconnect, and for garth sessions.
    rotated_refresh_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX_LENGTH))

    # Added by migration 0016. Keep-alive's attempts on the stored session that failed or met
    # Garmin's 429 since its tokens last changed (0 again whenever new tokens are stored, or
    # none). Keep-alive takes sessions with fewer first and holds one back longer with each
    # (auth_service.domain.policies.keepalive_retry_at), so accounts Garmin keeps refusing
    # and sessions that fail every time go to the back instead of heading every pass.
    keepalive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    # Added by migration 0017. When Garmin first refused the stored garth session's exchange
    # in doubt (a 401 that may be Garmin refusing our OAuth consumer or clock: auth_service.
    # upstream.garth.exchange_refusals) since its tokens last changed; NULL again whenever new
    # tokens are stored, or none. Kept in the row, not in a replica's memory, so a restart
    # does not start the grace again: a refusal in doubt GARMIN_AUTH_GARTH_REFUSAL_GRACE after
    # this ends the session (auth_service.domain.policies.doubtful_refusal_ends).
    first_doubtful_refusal_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Added by migration 0018. The SHA-256 (hex) of the DI refresh token an ImportSession
    # brought (a token file's, or one given field by field), kept through the session's
    # rotations; NULL after a sign-in, and for garth sessions. DI refresh tokens rotate, so
    # two rows refreshing from one token lose the account: an import of a refresh token an
    # ACTIVE row of another user id was imported from is refused before Garmin is asked, and
    # the unique index below refuses two such rows committed at once.
    imported_refresh_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX_LENGTH))

    # Added by migration 0019. The SHA-256 (hex) of the service URL and service ticket the
    # session was exchanged from (ExchangeServiceTicket; views.service_ticket_digest), kept
    # through its rotations; NULL after any other sign-in or import. Tickets are single-use:
    # the same exchange asked again for the user (a retry after a lost answer) is answered
    # from the row instead of being refused by Garmin.
    exchanged_ticket_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX_LENGTH))

    __table_args__ = (
        # LeaseNextSession walks ACTIVE sessions in sync order (never synced first, then the
        # oldest sync) and stops at the first due one: an index in exactly that order, over
        # ACTIVE rows only, keeps it flat however many sessions are stored. The order is
        # spelled (last_synced_at IS NOT NULL, last_synced_at) because SQLite indexes cannot
        # say NULLS FIRST and PostgreSQL's ascending order puts NULLs last. Sessions whose
        # garth exchange Garmin refused in doubt come after every other (lease_repository).
        Index(
            "ix_garmin_authentication_state_due",
            text("(first_doubtful_refusal_at IS NOT NULL)"),
            text("(last_synced_at IS NOT NULL)"),
            "last_synced_at",
            "user_id",
            postgresql_where=text("state = 'ACTIVE'"),
            sqlite_where=text("state = 'ACTIVE'"),
        ),
        # Keep-alive walks ACTIVE DI sessions by failed attempts, then refresh-token expiry,
        # soonest first: those never failed as a range of the index, in its order.
        Index(
            "ix_garmin_authentication_state_keepalive",
            "keepalive_failures",
            "refresh_token_expires_at",
            postgresql_where=text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'"),
            sqlite_where=text("state = 'ACTIVE' AND session_kind = 'DI_OAUTH2'"),
        ),
        # One imported refresh token, one ACTIVE session (imported_refresh_sha256).
        Index(
            "ix_garmin_authentication_state_imported_refresh",
            "imported_refresh_sha256",
            unique=True,
            postgresql_where=text(IMPORTED_AND_ACTIVE),
            sqlite_where=text(IMPORTED_AND_ACTIVE),
        ),
    )


class GarminMfaChallenge(Base):
    """A login waiting for its MFA code. At most one per user: a new Login supersedes it."""

    __tablename__ = "garmin_mfa_challenge"

    # SHA-256 (hex) of the challenge id handed to the caller: a database dump reveals no
    # usable challenge id.
    challenge_id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(USER_ID_LENGTH),
        ForeignKey("garmin_authentication_state.user_id", ondelete="CASCADE"),
        unique=True,
    )
    # AES-256-GCM blob of the PendingMfa (Garmin's SSO cookies and login parameters).
    pending_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    mfa_method: Mapped[str] = mapped_column(String(32))
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Set while one replica submits a code to Garmin, so a challenge completes at most once.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Added by migration 0014: the digest of the Garmin account the login signs in to
    # (auth_service.domain.signin_accounts), so SubmitMfa honours the account's cooldown.
    account_digest: Mapped[str | None] = mapped_column(String(ACCOUNT_DIGEST_LENGTH))


class GarminLoginThrottle(Base):
    """Per-user login counter for a fixed window, shared by every replica."""

    __tablename__ = "garmin_login_throttle"

    user_id: Mapped[str] = mapped_column(String(USER_ID_LENGTH), primary_key=True)
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Garmin's sign-in answered 429 for this account: no login reaches Garmin before then.
    signin_cooldown_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class GarminSignInAccount(Base):
    """Per-Garmin-account login counter and sign-in cooldown (added by migration 0014): the
    user's own (GarminLoginThrottle) for every user id signed in to the same account."""

    __tablename__ = "garmin_signin_account"

    # Keyed digest of the account's email (auth_service.domain.signin_accounts): no address.
    account_digest: Mapped[str] = mapped_column(String(ACCOUNT_DIGEST_LENGTH), primary_key=True)
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    signin_cooldown_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Added by migration 0015: the account's one sign-in (or MFA code) with Garmin, whichever
    # user id makes it, until then (a claim outlives only a replica that died holding it).
    sign_in_claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class GarminAccountLimit(Base):
    """One account's state toward Garmin: its cooldown after a 429 (no call reaches Garmin
    until `cooling_until`) and its one sign-in (or validation) in flight.

    Any replica may make the account's next call, so both live here; rows whose cooldown and
    call have ended are deleted by housekeeping.
    """

    __tablename__ = "garmin_account_limit"

    user_id: Mapped[str] = mapped_column(String(USER_ID_LENGTH), primary_key=True)
    # The endpoint that answered 429 (auth_service.domain.garmin_limits.GarminEndpoint).
    endpoint: Mapped[str | None] = mapped_column(String(ENDPOINT_LENGTH))
    cooling_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cooling_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    call_claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Added by migration 0013. The end of a sign-in's cooldown (sign-ins only) while the
    # cooldown above is another endpoint's, which holds back every call and ends sooner.
    sign_in_cooling_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class GarminEndpointBreaker(Base):
    """One Garmin endpoint's breaker, shared by every replica: its 429s in the current
    window and, while open or half-open, when the wait ends and whether a probe is out."""

    __tablename__ = "garmin_endpoint_breaker"

    endpoint: Mapped[str] = mapped_column(String(ENDPOINT_LENGTH), primary_key=True)
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rate_limited_calls: Mapped[int] = mapped_column(Integer, default=0)
    open_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    probe_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class GarminAuditEvent(Base):
    """One audited change (or security-relevant refusal): who, which RPC, whose session, how
    it ended. Never a secret: no token, password, MFA code or challenge id is ever stored."""

    __tablename__ = "garmin_audit_event"

    # Grows with every event. INTEGER on SQLite (the rowid, AUTOINCREMENT); BIGSERIAL on
    # PostgreSQL.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The caller's name from the callers file; "system" when no caller is known.
    caller: Mapped[str] = mapped_column(String(CALLER_LENGTH))
    # The RPC's name, e.g. "LeaseSession".
    rpc: Mapped[str] = mapped_column(String(RPC_LENGTH))
    # The user whose session the event concerns; NULL only when no user could be named.
    user_id: Mapped[str | None] = mapped_column(String(USER_ID_LENGTH))
    # gRPC status code name ("OK", "PERMISSION_DENIED", ...) and reason ("OK",
    # "MFA_CODE_REJECTED", ...); see auth_service.domain.audit.
    outcome_code: Mapped[str] = mapped_column(String(OUTCOME_CODE_LENGTH))
    outcome_reason: Mapped[str] = mapped_column(String(OUTCOME_REASON_LENGTH))
    # The lease the event concerns, when one does: its id's SHA-256 hex digest, never the id.
    lease_id: Mapped[str | None] = mapped_column(String(LEASE_ID_LENGTH))
    fencing_token: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        # ListAuditEvents by user, newest or oldest first (keyset on occurred_at, id).
        Index("ix_garmin_audit_event_user_time", "user_id", "occurred_at", "id"),
        # ListAuditEvents without a user filter, and prune_audit.
        Index("ix_garmin_audit_event_time", "occurred_at", "id"),
        # LEASE_LOST refusals name the user the presented lease was granted for.
        Index("ix_garmin_audit_event_lease_id", "lease_id"),
        # AUTOINCREMENT: ids are never reused, even after prune_audit emptied the table.
        {"sqlite_autoincrement": True},
    )


class GarminSessionChange(Base):
    """The change log (issue 16): one entry per audited change of a user's session, written
    in the change's transaction and numbered once committed, in commit order
    (auth_service.storage.change_log). Never a secret or a lease id: `status` is the
    session's status as callers see it."""

    __tablename__ = "garmin_session_change"

    # Insertion order (INTEGER AUTOINCREMENT on SQLite, BIGSERIAL on PostgreSQL); not commit
    # order, so never shown: `position` is.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    # The position in the log; NULL until a sequencing pass numbered the committed entry.
    position: Mapped[int | None] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    user_id: Mapped[str] = mapped_column(String(USER_ID_LENGTH))
    # The RPC whose change this is (the audit event's), e.g. "ReportInvalidated".
    rpc: Mapped[str] = mapped_column(String(RPC_LENGTH))
    # The session's state after the change, a SessionState value (WatchSessionEvents
    # filters on it).
    state: Mapped[str] = mapped_column(String(16))
    # The status after the change, as JSON (auth_service.storage.change_log's codec).
    status: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        # Followers read by position; a position is never handed out twice.
        Index("ix_garmin_session_change_position", "position", unique=True),
        # One user's changes (WatchSessionEvents with user_id).
        Index("ix_garmin_session_change_user", "user_id", "position"),
        # The entries a sequencing pass numbers.
        Index(
            "ix_garmin_session_change_pending",
            "id",
            postgresql_where=text("position IS NULL"),
            sqlite_where=text("position IS NULL"),
        ),
        {"sqlite_autoincrement": True},
    )


class GarminChangeCounter(Base):
    """The one row holding the last position handed out; its row lock orders commits."""

    __tablename__ = "garmin_change_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_position: Mapped[int] = mapped_column(BigInteger)


class GarminWebhookCursor(Base):
    """How far webhooks were delivered, and which replica delivers them now (a claim with a
    lease, so one replica at a time POSTs and a crashed one is replaced)."""

    __tablename__ = "garmin_webhook_cursor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # Every change up to this position was accepted by the receiver (a 2xx).
    delivered_through: Mapped[int] = mapped_column(BigInteger)
    # Failed attempts at the next change, and when the next attempt may start (backoff).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(CLAIM_ID_LENGTH))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
