"""Connecting a user's Garmin account by signing in: Login and SubmitMfa.

Transactions are short and never span a call to Garmin: read what is needed, commit, call
Garmin, then apply the answer conditionally (the row may have changed meanwhile).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from auth_service.domain import audit, validation
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminUnavailable,
    LoginRateLimited,
    MfaChallengeBusy,
    MfaChallengeNotFound,
    MfaCodeRejected,
    OutsideUserScope,
    SecretUnreadable,
)
from auth_service.domain.garmin_limits import GarminCall, GarminLimitSettings, endpoints_of
from auth_service.domain.models import (
    GarminTokens,
    LoginNeedsMfa,
    PendingMfa,
    SessionKind,
    SessionStatusView,
)
from auth_service.domain.policies import LoginFlow, LoginSettings, RefreshSettings
from auth_service.domain.ports import GarminUpstream
from auth_service.domain.repositories import MfaChallenge
from auth_service.domain.signin_accounts import SignInAccounts, SignInKeys
from auth_service.domain.views import SessionRow, live_lease, status_view
from auth_service.services.commit_retry import commit_retried
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.issued_in_flight import IssuedInFlight
from auth_service.services.signin_cooldown import SignInCooldown
from auth_service.services.unit_of_work import UnitOfWork, UnitsOfWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoginAnswer:
    """What Login answers: a status, plus the challenge when Garmin wants an MFA code."""

    status: SessionStatusView
    mfa_challenge_id: str | None = None
    mfa_method: str | None = None
    mfa_expires_at: datetime | None = None


def challenge_digest(challenge_id: str) -> str:
    """What is stored of a challenge id: a database dump reveals no usable one."""
    return hashlib.sha256(challenge_id.encode()).hexdigest()


class ConnectService:
    """Login, SubmitMfa."""

    def __init__(
        self,
        uow: UnitsOfWork,
        upstream: GarminUpstream,
        settings: LoginSettings,
        gate: GarminGate | None = None,
        commit_retry_seconds: float = RefreshSettings.commit_retry_seconds,
        in_flight: IssuedInFlight | None = None,
        accounts: SignInAccounts | None = None,
    ) -> None:
        self._uow = uow
        # One Garmin account's sign-ins are limited together, whichever user ids use it.
        self._accounts = accounts or SignInAccounts()
        self._upstream = upstream
        self._settings = settings
        self._commit_retry_seconds = commit_retry_seconds
        self._in_flight = in_flight or IssuedInFlight()
        self._cooldown = SignInCooldown(settings.signin_cooldown_seconds)
        self._gate = gate or GarminGate(uow, GarminLimitSettings())
        # The account's sign-in (and the gate's call of the user) held that long: as long as
        # the sign-in may be with Garmin, so another cannot reach Garmin beside it.
        self._hold_seconds = max(self._gate.exclusive_hold_seconds, settings.signin_claim_seconds)
        kind = SessionKind.GARTH if settings.flow is LoginFlow.GARTH else SessionKind.DI_OAUTH2
        self._login_endpoints = endpoints_of(GarminCall.LOGIN, kind)

    # --- Login -------------------------------------------------------------------------

    def login(self, user_id: str, email: str, password: str) -> LoginAnswer:
        validation.raise_if_any(
            validation.check_user_id(user_id),
            validation.check_email(email),
            validation.check_password(password),
        )
        keys = self._accounts.keys(user_id, email)
        self._refuse_if_held_back(keys)
        with self._in_flight.holding():
            return self._sign_in(keys, email, password)

    def _sign_in(self, keys: SignInKeys, email: str, password: str) -> LoginAnswer:
        user_id = keys.user_id
        with (
            # Entered first, left last: the account stays claimed until a 429's cooldown
            # is recorded, so another user id's sign-in cannot slip in between.
            self._account_claimed(keys, AuditedRpc.LOGIN),
            self._cooldown.watching(self._uow, keys),
            self._gate.calling(
                user_id,
                self._login_endpoints,
                AuditedRpc.LOGIN,
                exclusive=True,
                hold_seconds=self._hold_seconds,
            ) as call,
        ):
            # Counted once the account's one sign-in is ours: a Login refused because another
            # is with Garmin never reached Garmin, so it spends nothing of the user's limit.
            self._consume_login_attempt(keys)
            result = self._upstream.login(email, password)
            if isinstance(result, LoginNeedsMfa):
                # Garmin's SSO asked for the code: the ticket exchange comes with it.
                call.did_not_reach(*self._login_endpoints[1:])
        if isinstance(result, LoginNeedsMfa):
            with self._uow() as uow:
                uow.sessions.lock_or_create(user_id, uow.now)
                uow.challenges.delete_for_user(user_id)  # a new login supersedes a pending one
                return self._ask_for_mfa(uow, keys, result.pending)
        # Garmin completed the sign-in (its ticket is spent): a database that refuses the
        # commit for a moment is waited out, as for a rotated pair (commit_retried).
        status = store_signed_in(
            self._uow, user_id, result.tokens, AuditedRpc.LOGIN, self._commit_retry_seconds
        )
        return LoginAnswer(status=status)

    def _ask_for_mfa(self, uow: UnitOfWork, keys: SignInKeys, pending: PendingMfa) -> LoginAnswer:
        user_id = keys.user_id
        challenge_id = secrets.token_urlsafe(32)
        expires_at = uow.now + timedelta(seconds=self._settings.mfa_challenge_ttl_seconds)
        uow.challenges.add(
            challenge_digest(challenge_id),
            user_id,
            pending,
            expires_at=expires_at,
            now=uow.now,
            account=keys.account,
        )
        row = uow.sessions.mark_mfa_pending(user_id, uow.now)
        uow.audit.record(AuditedRpc.LOGIN, audit.MFA_REQUIRED, user_id=user_id)
        return LoginAnswer(
            status=status_view(row, uow.now),
            mfa_challenge_id=challenge_id,
            mfa_method=pending.mfa_method_shown,
            mfa_expires_at=expires_at,
        )

    def _refuse_if_held_back(self, keys: SignInKeys) -> None:
        """Garmin asked us to back off this account (or an endpoint): refused and recorded,
        not counted against the user's logins."""
        user_id = keys.user_id
        with self._uow() as uow:
            refusal = self._cooldown.refusal(uow, keys)
            if refusal is not None:
                self._gate.suppressed(self._login_endpoints[0], "signin_cooldown")
            else:
                refusal = self._gate.refusal(uow, user_id, self._login_endpoints)
            if refusal is not None:
                uow.audit.record(AuditedRpc.LOGIN, audit.outcome_of(refusal), user_id=user_id)
        if refusal is not None:
            raise refusal

    @contextmanager
    def _account_claimed(self, keys: SignInKeys, audited: AuditedRpc | None) -> Iterator[None]:
        """The Garmin account's one sign-in (or MFA code) with Garmin, whichever user id
        makes it: the gate claims the user's alone. Refused GARMIN_RATE_LIMITED while another
        user id's is out, or when the account's sign-in cooldown runs, read once the rows are
        locked: a 429 the other sign-in met before it let go is seen. `audited`: the RPC
        under which a cooldown refusal is recorded (None: the caller records it)."""
        if not keys.accounts:  # a challenge stored before the account was kept with it
            yield
            return
        endpoint = self._login_endpoints[0]
        with self._uow() as uow:
            # As long as the gate's claim of the user for the same sign-in: a replica that
            # died making it holds the account back no longer than the user.
            until = uow.now + timedelta(seconds=self._hold_seconds)
            refusal = None
            if not uow.throttle.claim_sign_in(keys, uow.now, until):
                refusal = self._gate.in_flight_refusal(endpoint)
            elif (refusal := self._cooldown.refusal(uow, keys)) is not None:
                self._gate.suppressed(endpoint, "signin_cooldown")
                uow.throttle.release_sign_in(keys, until)
                if audited is not None:
                    uow.audit.record(audited, audit.outcome_of(refusal), user_id=keys.user_id)
        if refusal is not None:
            raise refusal
        try:
            yield
        finally:
            self._release_account(keys, until)

    def _release_account(self, keys: SignInKeys, until: datetime) -> None:
        """Its failure leaves the claim to expire: the sign-in's own outcome (a session
        Garmin issued, stored) must not turn into an error."""
        try:
            with self._uow() as uow:
                uow.throttle.release_sign_in(keys, until)
        # The type only: driver messages can echo connection parameters.
        except Exception as exc:  # noqa: BLE001
            log.error(  # noqa: TRY400
                "sign-in claim of user %s's Garmin account not released (%s); it expires",
                keys.user_id,
                type(exc).__name__,
            )

    def _consume_login_attempt(self, keys: SignInKeys) -> None:
        with self._uow() as uow:
            reached = uow.throttle.consume(
                keys,
                uow.now,
                limit=self._settings.limit,
                window=timedelta(seconds=self._settings.window_seconds),
            )
            if reached is None:
                return
            whose = "this user's Garmin account" if reached.by_account else "this user"
            wait = reached.wait.total_seconds()
            refusal = LoginRateLimited(
                f"too many logins for {whose}; retry in {wait:.0f}s", retry_after_seconds=wait
            )
            uow.audit.record(AuditedRpc.LOGIN, audit.outcome_of(refusal), user_id=keys.user_id)
        raise refusal

    # --- SubmitMfa ---------------------------------------------------------------------

    def submit_mfa(
        self, mfa_challenge_id: str, code: str, *, user_id_prefix: str | None = None
    ) -> SessionStatusView:
        """Complete a Login's MFA; a caller scoped to `user_id_prefix` only for its users."""
        validation.raise_if_any(
            validation.check_opaque_id(mfa_challenge_id, "mfa_challenge_id"),
            validation.check_mfa_code(code),
        )
        digest = challenge_digest(mfa_challenge_id)
        with self._in_flight.holding():
            return self._complete_mfa(digest, code, user_id_prefix)

    def _complete_mfa(
        self, digest: str, code: str, user_id_prefix: str | None
    ) -> SessionStatusView:
        keys, pending, claimed_until = self._claim_challenge(digest, user_id_prefix)
        user_id = keys.user_id
        try:
            endpoints = endpoints_of(GarminCall.RESUME_MFA, pending.flow)
            with (
                self._account_claimed(keys, None),
                self._cooldown.watching(self._uow, keys),
                self._gate.calling(
                    user_id,
                    endpoints,
                    AuditedRpc.SUBMIT_MFA,
                    exclusive=True,
                    hold_seconds=self._hold_seconds,
                ),
            ):
                tokens = self._upstream.resume_mfa(pending, code)
        except MfaCodeRejected as rejected:
            self._count_wrong_code(digest, claimed_until, rejected)
            raise
        except MfaChallengeNotFound as forgotten:
            # Garmin no longer holds the pending login: no code can succeed on it.
            self._drop_challenge(digest, claimed_until, forgotten)
            raise
        except (GarminRateLimited, GarminUnavailable) as failed:
            if failed.pending_login_spent:
                # Garmin accepted the code, then its ticket's exchange failed: no code can
                # succeed on the spent pending login, so the challenge is over (its retry
                # answers MFA_CHALLENGE_NOT_FOUND without sending the code to Garmin again).
                self._drop_challenge(digest, claimed_until, failed)
            elif isinstance(failed, GarminRateLimited):
                # Held back by the gate (an open breaker, the account's back-off) is a
                # refusal the trail records, as Login's is; Garmin's own 429 the gate
                # recorded already.
                self._release_claim(digest, claimed_until, failed if failed.held_back else None)
            elif failed.unanswered:
                self._count_unanswered_code(digest, claimed_until)
            else:
                self._release_claim(digest, claimed_until)
            raise
        except BaseException:
            self._release_claim(digest, claimed_until)
            raise
        # Garmin has spent the code and its pending login: these tokens are the sign-in, so a
        # database that refuses the commit for a moment is waited out, while the claim lasts
        # (past it, another submission may take the challenge over).
        return commit_retried(
            lambda: self._store_signed_in(user_id, digest, claimed_until, tokens),
            seconds=max(0.0, (claimed_until - self._uow.now()).total_seconds()),
            what="MFA sign-in",
            user_id=user_id,
        )

    def _store_signed_in(
        self, user_id: str, digest: str, claimed_until: datetime, tokens: GarminTokens
    ) -> SessionStatusView:
        with self._uow() as uow:
            row = uow.sessions.lock_or_create(user_id, uow.now)
            if _still_claimed(uow, digest, claimed_until, row_locked=True) is None:
                # Deleted or superseded while Garmin answered: the user's newer intent wins.
                raise MfaChallengeNotFound("the MFA challenge was superseded or deleted")
            uow.challenges.delete(digest)
            return connect_tokens(uow, row, tokens, AuditedRpc.SUBMIT_MFA, validated=True)

    def _claim_challenge(
        self, digest: str, user_id_prefix: str | None
    ) -> tuple[SignInKeys, PendingMfa, datetime]:
        """Take the challenge for one submission; refusals still commit what they drop."""
        refusal: MfaChallengeNotFound | MfaChallengeBusy | GarminRateLimited | SecretUnreadable
        with self._uow() as uow:
            challenge = _locked(uow, digest)
            if challenge is not None and not validation.in_scope(challenge.user_id, user_id_prefix):
                # Another tenant's challenge: refused before anything about it changes.
                raise OutsideUserScope("this caller may not complete sign-ins outside its scope")
            if challenge is not None and (
                challenge.claimed_until is not None and challenge.claimed_until > uow.now
            ):
                # Even past its expiry: the submission holding it may still complete it with
                # the code Garmin accepts (housekeeping keeps it too: LIVE_CHALLENGE_ROW).
                refusal = MfaChallengeBusy("another SubmitMfa for this challenge is in progress")
            elif challenge is None or challenge.expires_at <= uow.now:
                if challenge is not None:
                    # No event (a refusal), but the user's status changed (MFA_PENDING is
                    # over): the change stream says so, as housekeeping's settle does.
                    for user_id in _abandon(uow, digest, challenge.user_id):
                        uow.audit_events.add_change(user_id, AuditedRpc.SUBMIT_MFA, uow.now)
                refusal = MfaChallengeNotFound(
                    "no such MFA challenge (expired, used or superseded)"
                )
            elif (cooling := self._cooldown.refusal(uow, challenge.sign_in_keys)) is not None:
                # Garmin's 429 on a sign-in step holds the account's whole sign-in back, the
                # code's check included; the challenge stays for after the cooldown.
                self._gate.suppressed(self._login_endpoints[0], "signin_cooldown")
                uow.audit.record(
                    AuditedRpc.SUBMIT_MFA, audit.outcome_of(cooling), user_id=challenge.user_id
                )
                refusal = cooling
            else:
                try:
                    pending = uow.challenges.open_pending(challenge)
                except SecretUnreadable as unreadable:
                    # As for a stored session: kept, and DATA_LOSS. This replica may only lack
                    # a key that the others hold (started from an old Secret); dropping the
                    # challenge would end a sign-in they could still complete.
                    log.warning(
                        "MFA challenge of user %s failed to decrypt; kept", challenge.user_id
                    )
                    refusal = unreadable
                else:
                    # As long as the code may be with Garmin: a claim that ended sooner
                    # would let a retry send a second code of the challenge meanwhile.
                    claimed_until = uow.now + timedelta(seconds=self._settings.mfa_claim_seconds)
                    uow.challenges.claim(digest, claimed_until)
                    return challenge.sign_in_keys, pending, claimed_until
        raise refusal

    def _count_wrong_code(
        self, digest: str, claimed_until: datetime, rejected: MfaCodeRejected
    ) -> None:
        with self._uow() as uow:
            challenge = _still_claimed(uow, digest, claimed_until)
            if challenge is None:
                return
            uow.challenges.release_claim(digest, wrong_code=True)
            used_up = challenge.failed_attempts + 1 >= self._settings.mfa_max_wrong_codes
            # The last code the challenge allows also settles the user's MFA_PENDING status.
            uow.audit.record(
                AuditedRpc.SUBMIT_MFA,
                audit.outcome_of(rejected),
                user_id=challenge.user_id,
                changed=used_up,
            )
            if used_up:
                _abandon(uow, digest, challenge.user_id)

    def _count_unanswered_code(self, digest: str, claimed_until: datetime) -> None:
        """The code reached Garmin, or may have, and its answer was lost: it counts as one of
        the challenge's tries (slowing Garmin down must not buy more guesses), and the claim
        stands until it ends, so a retry cannot send a code while Garmin may still be judging
        this one (MFA_CHALLENGE_BUSY meanwhile)."""
        with self._uow() as uow:
            challenge = _still_claimed(uow, digest, claimed_until)
            if challenge is None:
                return
            uow.challenges.count_attempt(digest)
            if challenge.failed_attempts + 1 >= self._settings.mfa_max_wrong_codes:
                # No event (Garmin gave no verdict), but MFA_PENDING is over: the change
                # stream says so, as for an expired challenge.
                for user_id in _abandon(uow, digest, challenge.user_id):
                    uow.audit_events.add_change(user_id, AuditedRpc.SUBMIT_MFA, uow.now)

    def _drop_challenge(
        self,
        digest: str,
        claimed_until: datetime,
        forgotten: MfaChallengeNotFound | GarminRateLimited | GarminUnavailable,
    ) -> None:
        with self._uow() as uow:
            challenge = _still_claimed(uow, digest, claimed_until)
            if challenge is not None:
                _abandon(uow, digest, challenge.user_id)
                uow.audit.record(
                    AuditedRpc.SUBMIT_MFA,
                    audit.outcome_of(forgotten),
                    user_id=challenge.user_id,
                    changed=True,
                )

    def _release_claim(
        self, digest: str, claimed_until: datetime, held_back: GarminRateLimited | None = None
    ) -> None:
        with self._uow() as uow:
            challenge = _still_claimed(uow, digest, claimed_until)
            if challenge is not None:
                uow.challenges.release_claim(digest, wrong_code=False)
                if held_back is not None:
                    uow.audit.record(
                        AuditedRpc.SUBMIT_MFA,
                        audit.outcome_of(held_back),
                        user_id=challenge.user_id,
                    )


def _still_claimed(
    uow: UnitOfWork, digest: str, claimed_until: datetime, *, row_locked: bool = False
) -> MfaChallenge | None:
    """The challenge, locked, while this submission's claim on it stands (None: deleted, or
    superseded while Garmin answered). `row_locked`: this transaction holds its user's row
    already, so the challenge is locked straight away, in the same order as _locked's."""
    challenge = uow.challenges.lock(digest) if row_locked else _locked(uow, digest)
    if challenge is None or challenge.claimed_until != claimed_until:
        return None
    return challenge


def _locked(uow: UnitOfWork, digest: str) -> MfaChallenge | None:
    """The challenge, locked after its user's session row. Every writer of both takes the row
    first (DeleteSession, Login, ImportSession, ExchangeServiceTicket): taken the other way
    round, the two transactions deadlock on PostgreSQL and one of them fails."""
    seen = uow.challenges.find(digest)
    if seen is None:
        return None
    uow.sessions.lock(seen.user_id)
    return uow.challenges.lock(digest)


def _abandon(uow: UnitOfWork, digest: str, user_id: str) -> list[str]:
    """The challenge ends without a session: the user's MFA_PENDING status is settled (the
    users settled: the user, or none when its row was not MFA_PENDING)."""
    uow.challenges.delete(digest)
    return uow.sessions.settle_abandoned_mfa(uow.now, user_id)


def connect_tokens(  # noqa: PLR0913 - keyword-only: where the tokens came from
    uow: UnitOfWork,
    locked: SessionRow,
    tokens: GarminTokens,
    rpc: AuditedRpc,
    *,
    validated: bool,
    rotated_away: str | None = None,
    imported_refresh_token: str | None = None,
    exchanged_ticket_sha256: str | None = None,
) -> SessionStatusView:
    """Make `tokens` the user's ACTIVE session (every way in: Login, SubmitMfa, ImportSession,
    ExchangeServiceTicket) and record it in the same transaction, naming the live lease it
    ended, if any. `rotated_away`: the refresh token whose refresh gave `tokens`.
    `imported_refresh_token`: the DI refresh token an import brought.
    `exchanged_ticket_sha256`: the digest of the service ticket exchanged for `tokens`."""
    ended = live_lease(locked, uow.now)
    row = uow.sessions.install_tokens(
        locked,
        tokens,
        uow.now,
        validated=validated,
        rotated_away=rotated_away,
        imported_refresh_token=imported_refresh_token,
        exchanged_ticket_sha256=exchanged_ticket_sha256,
    )
    uow.audit.record(rpc, audit.OK, user_id=row.user_id, lease=ended)
    return status_view(row, uow.now)


def store_signed_in(
    units: UnitsOfWork,
    user_id: str,
    tokens: GarminTokens,
    rpc: AuditedRpc,
    commit_retry_seconds: float,
    *,
    exchanged_ticket_sha256: str | None = None,
) -> SessionStatusView:
    """Store a session Garmin has just issued for a sign-in (Login without MFA, a service
    ticket): the ticket behind it is spent, so the commit is retried while the database
    refuses it, for at most `commit_retry_seconds`; a pending MFA login is superseded.
    `exchanged_ticket_sha256`: the digest of the service ticket the caller gave
    (ExchangeServiceTicket: views.service_ticket_digest)."""

    def store() -> SessionStatusView:
        with units() as uow:
            row = uow.sessions.lock_or_create(user_id, uow.now)
            uow.challenges.delete_for_user(user_id)
            return connect_tokens(
                uow,
                row,
                tokens,
                rpc,
                validated=True,
                exchanged_ticket_sha256=exchanged_ticket_sha256,
            )

    return commit_retried(
        store, seconds=commit_retry_seconds, what=f"{rpc.value} sign-in", user_id=user_id
    )
