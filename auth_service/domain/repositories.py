"""What the use cases need from storage: one transaction's repositories (ports).

auth_service.storage implements them with SQLAlchemy. Repositories never commit: a use case
opens a transaction (Store.transaction), calls them, and the transaction commits when the
block ends without an exception. Every change of a session row is one method here, written
once in storage and used by every path that makes that change.

Repositories seal and open the secrets they store: a use case hands them GarminTokens and
PendingMfa and gets them back, never ciphertext. SecretUnreadable (auth_service.domain.errors,
answered DATA_LOSS) says a stored secret no key opens (unknown key id, tampering, a blob
copied into another row or rolled back to an older one).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from auth_service.domain.audit import AuditedRpc, AuditEventView, LeaseOwner, NewAuditEvent
from auth_service.domain.change_ports import ChangeLogRepository, WebhookCursorRepository
from auth_service.domain.garmin_limits import AccountLimit, Breaker, GarminEndpoint
from auth_service.domain.models import (
    GarminTokens,
    PendingMfa,
    SessionKind,
    SessionState,
    SessionStatusView,
)
from auth_service.domain.signin_accounts import SignInKeys
from auth_service.domain.views import SessionRow


@dataclass(frozen=True)
class GrantedRow:
    """A row just granted, and whether the grant took over a lease that expired unreleased."""

    row: SessionRow
    took_over: bool


@dataclass(frozen=True)
class HandoverRows:
    """A handover's two changes: the released row (None: the release was refused, and then
    nothing was granted) and the next row granted (None: nothing due, or refused)."""

    released: SessionRow | None
    granted: GrantedRow | None


@dataclass(frozen=True)
class LoginLimitReached:
    """A Login over the login limit: how long until it may count again, and whether the limit
    reached is the Garmin account's (several user ids signed in to it) or the user's."""

    wait: timedelta
    by_account: bool


@dataclass(frozen=True, repr=False)
class MfaChallenge:
    """A pending MFA challenge as stored (its SSO cookies still sealed)."""

    challenge_id_sha256: str
    user_id: str
    failed_attempts: int
    claimed_until: datetime | None
    expires_at: datetime
    sealed_pending: bytes
    # The digest of the Garmin account the login signs in to (domain.signin_accounts; None
    # for a challenge stored before revision 0014).
    account: str | None = None

    def __repr__(self) -> str:
        return f"MfaChallenge(user_id={self.user_id!r}, <sealed>)"

    @property
    def sign_in_keys(self) -> SignInKeys:
        return SignInKeys.of_challenge(self.user_id, self.account)


class SessionRepository(Protocol):
    """The users' session rows (garmin_authentication_state)."""

    def find(self, user_id: str, now: datetime) -> SessionRow | None:
        """The row as callers see it at `now`: an MFA_PENDING row whose challenge is gone
        reads as what it settles to (settle_abandoned_mfa), without writing anything."""
        ...

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
        """Up to `limit` rows as `find` sees them, by user_id, after `after_user_id`; only
        those in `state` and those storing a session of `kind`, when given, and users whose
        id starts with `user_id_prefix`, when given."""
        ...

    def lock(self, user_id: str) -> SessionRow | None:
        """The row, locked for this transaction; None when the user has none."""
        ...

    def lock_or_create(self, user_id: str, now: datetime) -> SessionRow:
        """The row, locked; created NOT_CONNECTED when the user is new."""
        ...

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
        """Make `tokens` the user's ACTIVE session (login, MFA, import) over `locked`, the
        row this transaction locked (lock_or_create); a live lease ends. `rotated_away`: the
        refresh token whose refresh gave `tokens` (an imported file's), then the only one
        that counts as rotated away; else none does any more. `imported_refresh_token`: the
        DI refresh token an import brought (raises RefreshTokenImportedElsewhere when the
        ACTIVE session of another user id was imported from it). `exchanged_ticket_sha256`: the
        digest of the service ticket ExchangeServiceTicket exchanged for `tokens`
        (views.service_ticket_digest)."""
        ...

    def imported_elsewhere(self, user_id: str, refresh_token: str) -> bool:
        """Whether the ACTIVE session of a user id other than `user_id` was imported from
        `refresh_token` (an unlocked read; install_tokens checks again)."""
        ...

    def mark_mfa_pending(self, user_id: str, now: datetime) -> SessionRow:
        """A login waits for its MFA code: MFA_PENDING, unless a working session stays ACTIVE."""
        ...

    def disconnect(self, user_id: str, now: datetime) -> SessionRow | None:
        """Back to NOT_CONNECTED: secrets wiped, lease ended, sync bookkeeping cleared."""
        ...

    def store_validation(self, user_id: str, *, version: int, now: datetime) -> SessionRow | None:
        """Garmin accepted session `version` as it is (GetStatus with validate); None when
        the row no longer holds that ACTIVE session. A refresh is stored by
        RefreshRepository.store_rotated."""
        ...

    def invalidate(
        self, user_id: str, *, version: int, reason: str, now: datetime
    ) -> SessionRow | None:
        """Garmin rejected session `version`: AUTH_EXPIRED, secrets wiped, lease ended; None
        when the row no longer holds that ACTIVE session."""
        ...

    def note_doubtful_refusal(self, user_id: str, *, version: int, now: datetime) -> None:
        """Garmin refused the exchange of garth session `version` in doubt at `now`: kept as
        the session's first such refusal, unless one is kept already; nothing when the row no
        longer holds that ACTIVE session."""
        ...

    def settle_abandoned_mfa(self, now: datetime, user_id: str | None = None) -> list[str]:
        """MFA_PENDING rows whose challenge is gone fall back to what they were before; the
        users settled."""
        ...

    def open_tokens(self, row: SessionRow) -> GarminTokens:
        """The tokens an ACTIVE row holds; raises SecretUnreadable."""
        ...


class ChallengeRepository(Protocol):
    """Pending MFA challenges (garmin_mfa_challenge)."""

    def find(self, challenge_id_sha256: str) -> MfaChallenge | None:
        """The challenge as it is now, unlocked."""
        ...

    def lock(self, challenge_id_sha256: str) -> MfaChallenge | None: ...

    def add(
        self,
        challenge_id_sha256: str,
        user_id: str,
        pending: PendingMfa,
        *,
        expires_at: datetime,
        now: datetime,
        account: str | None = None,
    ) -> None: ...

    def open_pending(self, challenge: MfaChallenge) -> PendingMfa:
        """The challenge's SSO cookies and login parameters; raises SecretUnreadable."""
        ...

    def claim(self, challenge_id_sha256: str, until: datetime) -> None:
        """Mark the challenge as being submitted to Garmin by this replica until `until`."""
        ...

    def release_claim(self, challenge_id_sha256: str, *, wrong_code: bool) -> None:
        """End the claim; with `wrong_code`, count one more failed attempt."""
        ...

    def count_attempt(self, challenge_id_sha256: str) -> None:
        """Count one more failed attempt, the claim left as it is (a code whose answer was
        lost: Garmin may still be judging it until the claim ends)."""
        ...

    def delete(self, challenge_id_sha256: str) -> None: ...

    def delete_for_user(self, user_id: str) -> None: ...

    def delete_expired(self, now: datetime) -> int:
        """Delete every challenge that expired by `now` (their SSO cookies with them)."""
        ...


class ThrottleRepository(Protocol):
    """Login counters and sign-in cooldowns, per user (garmin_login_throttle) and per Garmin
    account (garmin_signin_account), shared by every replica."""

    def consume(
        self, keys: SignInKeys, now: datetime, *, limit: int, window: timedelta
    ) -> LoginLimitReached | None:
        """Count one login attempt for the user and its account, or for neither: returns what
        is over the limit instead (the longer wait when both are)."""
        ...

    def purge_stale(self, now: datetime, window: timedelta) -> int:
        """Delete counters whose window has ended (or that start in the future), unless
        their sign-in cooldown still runs."""
        ...

    def cooldown_until(self, keys: SignInKeys) -> datetime | None:
        """When the later of the user's and its account's sign-in cooldowns ends (None: none
        was ever started)."""
        ...

    def start_cooldown(self, keys: SignInKeys, until: datetime, now: datetime) -> None:
        """No login for the user or its account reaches Garmin before `until` (a later end
        wins)."""
        ...

    def claim_sign_in(self, keys: SignInKeys, now: datetime, until: datetime) -> bool:
        """Take the account's one sign-in with Garmin until `until`, under every digest of
        it; False (nothing taken) while another sign-in of the account holds it."""
        ...

    def release_sign_in(self, keys: SignInKeys, until: datetime) -> None:
        """The account's claim taken until `until` is over (nothing where another claim
        has replaced it)."""
        ...


class GarminLimitRepository(Protocol):
    """Garmin's 429s as every replica sees them: per-account cooldowns
    (garmin_account_cooldown) and one breaker per endpoint (garmin_endpoint_breaker)."""

    def account(self, user_id: str) -> AccountLimit | None:
        """The account's cooldown and claimed call (None: neither ever, or purged)."""
        ...

    def start_account_cooldown(
        self, user_id: str, endpoint: GarminEndpoint, until: datetime, now: datetime
    ) -> bool:
        """No call for the account reaches Garmin before `until` (a later end wins); True
        when no cooldown of the account was running at `now` (a new one starts). A Connect
        API 429 names the running cooldown (unless it is the sign-in's), so it holds back the
        account's leases until it ends."""
        ...

    def claim_call(
        self, user_id: str, now: datetime, until: datetime, *, despite_sign_in_cooldown: bool
    ) -> bool:
        """Take the account's one call to Garmin until `until`; False while another call
        of the account holds it or its cooldown runs (`despite_sign_in_cooldown`: unless
        the sign-in, GarminEndpoint.SSO, started that cooldown)."""
        ...

    def release_call(self, user_id: str, claimed_until: datetime) -> None:
        """The account's call claimed until `claimed_until` is over (nothing when that claim
        expired and another call claimed the account since)."""
        ...

    def breakers(self, endpoints: tuple[GarminEndpoint, ...]) -> list[Breaker]:
        """The stored breakers among `endpoints` (one never tripped has no row)."""
        ...

    def count_rate_limited(self, endpoint: GarminEndpoint, now: datetime, window: timedelta) -> int:
        """Count one 429 of the endpoint in its window (a window older than `window`
        starts again); returns the count, the endpoint's row locked until commit."""
        ...

    def open_breaker(self, endpoint: GarminEndpoint, until: datetime) -> None:
        """Open the endpoint's breaker until `until` (a later end wins); any probe is over."""
        ...

    def claim_probe(self, endpoint: GarminEndpoint, now: datetime, until: datetime) -> bool:
        """Take the half-open breaker's one probe; False when it is not half-open at `now`
        or another call's probe is still out."""
        ...

    def close_breaker(self, endpoint: GarminEndpoint, probe_until: datetime) -> None:
        """The probe claimed until `probe_until` was answered: calls go through again,
        counting from zero. Nothing when that probe is no longer the breaker's (it ran out
        and another call probed, or a 429 opened the breaker again meanwhile)."""
        ...

    def release_probe(self, endpoint: GarminEndpoint, probe_until: datetime) -> None:
        """The probe claimed until `probe_until` did not reach Garmin (or got no answer):
        another call may probe. Nothing when that probe is no longer the breaker's."""
        ...

    def purge_ended(self, now: datetime) -> int:
        """Delete accounts whose cooldown and claimed call have both ended."""
        ...


class LeaseRepository(Protocol):
    """The lease columns of the session rows, each change one conditional statement.

    A lease is live while its lease id's digest (lease_digest: every method takes the digest,
    never the id) matches, it has not expired and the session is
    ACTIVE; every method that names a lease returns None when it is not live.
    """

    def find(self, user_id: str) -> SessionRow | None: ...

    def find_by_lease(self, lease_digest: str, now: datetime) -> SessionRow | None: ...

    def grant(
        self,
        user_id: str,
        *,
        lease_digest: str,
        holder: str,
        caller: str,
        now: datetime,
        expires_at: datetime,
        record_as: AuditedRpc | None = None,
    ) -> GrantedRow | None:
        """Grant, binding the lease to `caller` (the authenticated caller's name); None
        while another lease is live, the session is not ACTIVE or the account waits out a
        Connect API cooldown (AccountLimit.connect_api_cooling).

        `record_as` (here and below): the same statement also writes the change's audit event
        (this RPC, `caller`, outcome OK, at `now`) and its change-log entry (the use case
        then records nothing itself)."""
        ...

    def grant_next(  # noqa: PLR0913 - keyword-only: what the grant sets and selects by
        self,
        *,
        lease_digest: str,
        holder: str,
        caller: str,
        now: datetime,
        expires_at: datetime,
        due_before: datetime,
        user_id_prefix: str | None = None,
        record_as: AuditedRpc | None = None,
    ) -> GrantedRow | None:
        """Grant the most overdue session, among users whose id starts with
        `user_id_prefix` when given; an account waiting out a Connect API cooldown is not
        due until it ends."""
        ...

    def renew(
        self,
        lease_digest: str,
        *,
        caller: str,
        now: datetime,
        expires_at: datetime,
        user_id_prefix: str | None = None,
        record_as: AuditedRpc | None = None,
    ) -> SessionRow | None:
        """Extend a live lease that `caller` obtained (of a user whose id starts with
        `user_id_prefix`, when given); None when dead, another caller's or out of scope."""
        ...

    def release(
        self,
        lease_digest: str,
        *,
        caller: str,
        now: datetime,
        synced_through: datetime | None,
        record_as: AuditedRpc | None = None,
    ) -> SessionRow | None:
        """End a live lease that `caller` obtained; None when dead or another caller's."""
        ...

    def release_and_grant_next(  # noqa: PLR0913 - keyword-only: a release's and a grant's
        self,
        released_digest: str,
        *,
        synced_through: datetime | None,
        lease_digest: str,
        holder: str,
        caller: str,
        now: datetime,
        expires_at: datetime,
        due_before: datetime,
        user_id_prefix: str | None = None,
    ) -> HandoverRows:
        """`release` of the lease `released_digest`, then, only if it was released,
        `grant_next`, in one unit (on PostgreSQL one statement): both recorded, the release
        as ReleaseLease and the grant as LeaseNextSession."""
        ...

    def store_refreshed(
        self, lease_digest: str, *, locked: SessionRow, tokens: GarminTokens, now: datetime
    ) -> SessionRow | None:
        """Store refreshed tokens under a live lease over the user's row, which the caller
        locked (`locked`, as read), with the digest of the DI refresh token they rotated
        away (views.rotated_away); None when the lease is dead or the row moved on."""
        ...

    def invalidate(self, lease_digest: str, *, now: datetime, reason: str) -> SessionRow | None: ...


@dataclass(frozen=True)
class KeepAliveCandidate:
    """An ACTIVE DI session whose refresh token dies soon (or at an unknown time)."""

    user_id: str
    session_version: int
    refresh_token_expires_at: datetime | None
    # Keep-alive's attempts on it that failed or met Garmin's 429 since its tokens changed.
    keepalive_failures: int = 0


class RefreshRepository(Protocol):
    """Claims on refreshing a session, and storing what the claimed refresh brought.

    A claim is one conditional statement: it holds only if the row still has the expected
    session version, is ACTIVE and has no live claim, so of the replicas that try at once
    exactly one gets it. Every change of the stored tokens ends the claim.
    """

    def claim(  # noqa: PLR0913 - keyword-only: the claim and whose conditions it obeys
        self,
        user_id: str,
        *,
        version: int,
        claim_id: str,
        now: datetime,
        until: datetime,
        unleased: bool = False,
        held_by: str | None = None,
        keepalive: bool = False,
    ) -> SessionRow | None:
        """Claim the refresh of session `version` until `until` (with `unleased`, only if
        no live lease holds the session; with `held_by`, a lease digest, only while that
        lease is live; with `keepalive`, keep-alive's own, only if no live lease holds it and
        keep-alive does not hold it back past `now`: keepalive_not_before); None when
        refused."""
        ...

    def release(self, user_id: str, *, claim_id: str) -> None:
        """End our claim without storing anything (Garmin was busy, or we failed)."""
        ...

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
        """Store the tokens a refresh of session `version` brought (the claim ends), when
        keep-alive may pick the session again (policies.keepalive_not_before) and the digest
        of the DI refresh token the refresh rotated away (views.rotated_away: the one
        `replaced`, the row at `version` the refresh was claimed on, holds), in one
        statement; None when the row no longer holds that ACTIVE session (a login or import
        won)."""
        ...

    def defer_keepalive(self, user_id: str, *, version: int, until: datetime) -> None:
        """Keep-alive leaves session `version` alone until `until` (its account is cooling);
        nothing when the row moved on."""
        ...

    def fail_keepalive(
        self, user_id: str, *, version: int, until_after: Sequence[datetime]
    ) -> datetime | None:
        """Keep-alive's attempt on session `version` failed or met a 429: one more failed
        attempt, and left alone until until_after[n], n being the failed attempts the row
        counts as it is written (another replica's may have landed since the caller read
        it; the last entry for any more), in one statement. The hold-back written; None
        when the row moved on."""
        ...

    def keepalive_candidates(
        self, *, now: datetime, dies_before: datetime, last_stretch: datetime, limit: int
    ) -> list[KeepAliveCandidate]:
        """ACTIVE DI sessions whose refresh token dies before `dies_before` or at an unknown
        time, not under a live lease or claim, nor held back past `now` (keepalive_not_before):
        those dying before `last_stretch` first, soonest first whatever their failed
        keep-alive attempts; then those with fewer failed attempts first, then soonest
        (unknown first)."""
        ...


class AuditRepository(Protocol):
    """The audit trail (garmin_audit_event)."""

    def add(
        self,
        event: NewAuditEvent,
        *,
        leaves: SessionStatusView | None = None,
        changed: bool | None = None,
    ) -> None:
        """Record `event` in this transaction. `leaves`: the user's status as the transaction
        leaves it, when the caller holds it (else the change log reads it back). `changed`:
        whether the event records a change of the user's session, which the change log then
        carries (None: an OK outcome is a change, any other a refusal)."""
        ...

    def add_change(self, user_id: str, rpc: str, occurred_at: datetime) -> None:
        """Record a change of the user's session that no event records (housekeeping's), for
        the change log alone."""
        ...

    def lease_owner(self, lease_digest: str) -> LeaseOwner | None: ...

    def list_page(
        self,
        *,
        user_id: str | None,
        start_time: datetime | None,
        end_time: datetime | None,
        after: tuple[datetime, int] | None,
        oldest_first: bool,
        limit: int,
        user_id_prefix: str | None = None,
    ) -> list[AuditEventView]: ...


class Transaction(Protocol):
    """The repositories of one open transaction."""

    @property
    def sessions(self) -> SessionRepository: ...
    @property
    def challenges(self) -> ChallengeRepository: ...
    @property
    def throttle(self) -> ThrottleRepository: ...
    @property
    def leases(self) -> LeaseRepository: ...
    @property
    def refreshes(self) -> RefreshRepository: ...
    @property
    def audit_events(self) -> AuditRepository: ...
    @property
    def limits(self) -> GarminLimitRepository: ...
    @property
    def changes(self) -> ChangeLogRepository: ...
    @property
    def webhook_cursor(self) -> WebhookCursorRepository: ...


class Store(Protocol):
    """Where the service keeps its state."""

    def transaction(self) -> AbstractContextManager[Transaction]:
        """A transaction: committed when the block ends, rolled back when it raises."""
        ...

    def exclusive(self, name: str) -> AbstractContextManager[Transaction | None]:
        """A transaction that only one replica at a time gets for `name`; None (and nothing
        to do) while another replica holds it."""
        ...

    def single_write(self) -> AbstractContextManager[Transaction]:
        """A unit whose only write is one statement that records its own audit event and
        change-log entry (a lease holder's renewal or release). Where the store writes such
        a statement whole, it commits by itself: no BEGIN and COMMIT round trips. So the
        block must write nothing else and must not need that write undone: it may read, and
        decide its answer from what the statement returned."""
        ...
