"""The one way the service refreshes a stored session: single flight across replicas.

DI refresh tokens rotate: every refresh kills the old refresh token, so two refreshes with
the same token lose the account. Every refresh the service makes (lease grants, GetStatus
with validate, keep-alive) comes here:

1. A short transaction claims the refresh on the row, only if the row still holds the
   expected session version and no live claim (RefreshRepository.claim). A caller that finds
   another replica's claim waits, polling the row, until the version moves, and then uses the
   new tokens without calling Garmin.
2. The winner calls Garmin outside any transaction, with at most `concurrency` refreshes of
   this replica in flight at once.
3. The rotated pair is committed before anyone gets to use it, with the time before which
   keep-alive leaves the session alone (auth_service.domain.policies.keepalive_not_before).
   If the commit fails (the database is restarting) the pair stays in memory and the commit
   is retried until it lands or `commit_retry_seconds` pass: an old refresh token is never
   sent again, and a new pair is dropped only when a crash hits that window
   (docs/RELIABILITY.md).
4. Garmin saying the session is dead (invalid_grant, 401) ends it only after re-reading the
   row shows no newer token; 429, 5xx and timeouts release the claim and change nothing.
5. Garmin's 429s are honoured through the gate (auth_service.services.garmin_gate): during
   the account's cooldown, or while the endpoint's breaker is open, nobody claims and
   GarminRateLimited says how long to wait; a 429 starts the cooldown before the claim is
   released, so the callers waiting on the claim see it instead of asking Garmin in turn.

Garth sessions take every step but the claim: their exchange rotates nothing (the OAuth1 token
stays), so a second exchange is harmless, while a claim left by a replica killed inside
Garmin would keep the session from being refreshed for a whole claim lifetime. The exception
is RefreshLease (auth_service.services.lease_refresh): a worker whose token Garmin refused
asks from every request it had in flight at once, and each would be one more exchange at an
endpoint that answers 429 when called often; its asker claims garth sessions too.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from auth_service.domain import audit
from auth_service.domain.context import answer_by, rpc_answer_by
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminRefusalInDoubt,
    GarminSessionRejected,
    GarminUnavailable,
    LeaseHeld,
    LeaseLost,
    SessionNotActive,
)
from auth_service.domain.events import RefreshEvents
from auth_service.domain.garmin_limits import (
    GarminCall,
    GarminEndpoint,
    GarminLimitSettings,
    endpoints_of,
)
from auth_service.domain.models import GarminTokens, SessionKind, SessionState
from auth_service.domain.policies import (
    RefreshSettings,
    doubtful_refusal_ends,
    keepalive_not_before,
)
from auth_service.domain.ports import GarminUpstream
from auth_service.domain.views import SessionRow, live_lease, live_lease_of, refresh_claimed
from auth_service.services.commit_retry import commit_retried
from auth_service.services.garmin_gate import Admission, GarminGate
from auth_service.services.issued_in_flight import IssuedInFlight
from auth_service.services.refresh_askers import (
    RefreshAsker,
    RefreshBusy,
    Refreshed,
    RefreshedWithoutAccess,
    RefreshSlotsBusy,
    StillRefreshingElsewhere,
)
from auth_service.services.unit_of_work import UnitOfWork, UnitsOfWork

__all__ = [
    "RefreshAsker",
    "RefreshBusy",
    "Refreshed",
    "RefreshedWithoutAccess",
    "SessionRefresher",
    "StillRefreshingElsewhere",
]

log = logging.getLogger(__name__)

# Bytes of randomness in a claim id (32 URL-safe characters).
CLAIM_ID_BYTES = 24
# How often a waiting caller looks at the row again.
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class RefreshUnderWay:
    """A refresh of session `version` of the user is out at Garmin (a live claim), found by
    an attempt of SessionRefresher.after_refresh_under_way before it wrote anything."""

    user_id: str
    version: int


Outcome = TypeVar("Outcome")


class SessionRefresher:
    """Refreshes sessions, one refresh per rotation across replicas; one per replica."""

    def __init__(
        self,
        uow: UnitsOfWork,
        upstream: GarminUpstream,
        settings: RefreshSettings,
        events: RefreshEvents,
        gate: GarminGate | None = None,
        in_flight: IssuedInFlight | None = None,
    ) -> None:
        self._uow = uow
        self._upstream = upstream
        self._settings = settings
        self._events = events
        self._gate = gate or GarminGate(uow, GarminLimitSettings())
        self._slots = threading.BoundedSemaphore(settings.concurrency)
        # A graceful stop waits for the rotations under way (IssuedInFlight).
        self.in_flight = in_flight or IssuedInFlight()

    def refresh(
        self,
        user_id: str,
        expected_version: int,
        asker: RefreshAsker,
        *,
        unleased: bool = False,
        held_by: str | None = None,
    ) -> Refreshed:
        """Refresh session `expected_version` of the user, or use the tokens that replaced it.
        `unleased`: only while no live lease holds the session (a refresh that does not
        come from the holder: it would kill the refresh token a worker_full holder has).

        Raises GarminSessionRejected (the session ended), GarminRateLimited or
        GarminUnavailable (nothing changed; also when another replica's refresh failed, and
        StillRefreshingElsewhere when it did not finish in time), SessionNotActive (the
        session is gone), with `unleased` LeaseHeld, and with `held_by` (the digest of the
        asker's lease: a holder's refresh) LeaseLost once that lease is not live: a holder
        whose lease was taken over must not rotate the new holder's refresh token.

        A refresh of ours whose answer carried no access token we could read leaves an
        expired one (the adapter keeps the rotation so): the pair is stored, its refresh
        token being the only live one, and RefreshedWithoutAccess (a GarminUnavailable: try
        again, the next refresh uses the stored refresh token) is raised instead of handing
        it back. With `held_by` that holds for any expired access token (another replica's
        such rotation, waited for): a lease holder is never handed one as fresh.
        """
        refreshed = self._refresh(
            user_id, expected_version, asker, wait=True, unleased=unleased, held_by=held_by
        )
        expired = refreshed.tokens.oauth2.expires_at <= self._uow.now()
        if expired and (refreshed.by_us or held_by is not None):
            log.warning(
                "refresh of user %s left an expired access token (a rotation whose answer "
                "carried none we could read): stored, not handed out",
                user_id,
            )
            raise RefreshedWithoutAccess(
                "Garmin's refresh answer carried no usable access token; the session is kept "
                "and refreshes again on the next try"
            )
        return refreshed

    def refresh_unless_claimed(
        self, user_id: str, expected_version: int, asker: RefreshAsker
    ) -> Refreshed:
        """Keep-alive's refresh: like refresh, but for sessions nobody is using and keep-alive
        does not hold back: raises RefreshBusy instead of waiting for another's claim, or
        when a live lease holds the session, or keep-alive's hold-back (keepalive_not_before)
        has not ended, as the row has it at the claim (another replica's overlapping pass
        may have failed on it since this one chose it)."""
        return self._refresh(
            user_id, expected_version, asker, wait=False, unleased=True, keepalive=True
        )

    def after_refresh_under_way(
        self, attempt: Callable[[RefreshUnderWay | None], Outcome | RefreshUnderWay]
    ) -> Outcome:
        """A write that must not end a session whose refresh is out at Garmin (a report or a
        check that Garmin refused a token): `attempt(None)`, which answers RefreshUnderWay,
        having written nothing, when it finds a live claim on the version refused; then, once
        that claim has ended, `attempt(under_way)`, which writes whatever it finds. If Garmin
        rotated the pair meanwhile, the refusal is of a replaced token; ended under the
        claim, the session would lose the pair Garmin was issuing. Raises
        StillRefreshingElsewhere when the wait runs out, as a refresh waiting would."""
        outcome = attempt(None)
        if not isinstance(outcome, RefreshUnderWay):
            return outcome
        self._wait_for_claim(outcome.user_id, outcome.version)
        retried = attempt(outcome)
        if isinstance(retried, RefreshUnderWay):
            raise TypeError("an attempt after the wait found the claim again: a bug")
        return retried

    def _wait_for_claim(self, user_id: str, version: int) -> None:
        """Wait while a claim on session `version` of the user is live (its refresh out at
        Garmin): until the claim ends, by a stored pair or a release, or the version moves.
        Raises StillRefreshingElsewhere when the wait runs out (wait_seconds, or the RPC's
        answer time), as a refresh waiting on the claim would."""
        deadline = answer_by(time.monotonic() + self._settings.wait_seconds)
        while True:
            with self._uow() as uow:
                row = uow.leases.find(user_id)
                now = uow.now
            if row is None or row.session_version != version or not refresh_claimed(row, now):
                return
            self._may_wait(user_id, wait=True, deadline=deadline)
            time.sleep(POLL_SECONDS)

    def refusal(self, user_id: str) -> GarminRateLimited | None:
        """Why the gate would refuse a refresh of the user's session now (None: it would
        let it through, or there is no session), read without claiming anything; a refusal
        counts as a suppressed call. Keep-alive asks before it spends a start of its pace on
        a session whose account waits out a cooldown."""
        with self._uow() as uow:
            row = uow.leases.find(user_id)
            if row is None:
                return None
            return self._gate.refusal(uow, user_id, _endpoints(row))

    def refresh_new(self, tokens: GarminTokens) -> GarminTokens:
        """Refresh at Garmin tokens no row holds yet (an imported token file's), as one of
        this replica's refreshes in flight (`concurrency`) and counted as one. The caller
        admits the call at the gate, stores the pair and says how long that took
        (pair_stored). Raises what GarminUpstream.refresh raises."""
        kind = tokens.kind.value
        started = time.monotonic()
        with self._slot():
            try:
                fresh = self._upstream.refresh(tokens)
            except BaseException as exc:
                self._events.refresh_finished(kind, _outcome(exc), time.monotonic() - started)
                raise
        self._events.refresh_finished(kind, "rotated", time.monotonic() - started)
        return fresh

    def pair_stored(self, seconds: float) -> None:
        """A pair from refresh_new lived `seconds` in this replica's memory before its
        commit landed (a crash within it loses it)."""
        self._events.rotated_pair_unstored(seconds)

    # --- claiming ------------------------------------------------------------------------

    def _refresh(
        self,
        user_id: str,
        expected_version: int,
        asker: RefreshAsker,
        *,
        wait: bool,
        unleased: bool,
        held_by: str | None = None,
        keepalive: bool = False,
    ) -> Refreshed:
        deadline = answer_by(time.monotonic() + self._settings.wait_seconds)
        waited = False
        while True:
            row, tokens, refused = self._current(user_id, refusing_version=expected_version)
            if row.session_version != expected_version:
                if waited:
                    self._events.refresh_waited("rotated")
                return Refreshed(tokens, row, by_us=False)
            now = self._uow.now()
            if unleased and wait:
                _refuse_if_leased(row, now)
            if held_by is not None:
                _refuse_unless_held(row, now, held_by)
            if refresh_claimed(row, now):
                self._may_wait(user_id, wait=wait, deadline=deadline)
                waited = True
                time.sleep(POLL_SECONDS)
                continue
            if refused is not None:
                raise refused  # Garmin asked us to wait: nobody claims, nobody calls
            if waited and row.refresh_claimed_until is None:
                # Released, not expired: the other replica's refresh failed (Garmin busy).
                # Asking Garmin again at once would only add to its load.
                self._events.refresh_waited("released")
                raise GarminUnavailable("the session's refresh failed just now; try again shortly")
            with contextlib.ExitStack() as rotating:
                with self._slot():
                    # From before the claim to the pair's commit: a graceful stop waits for
                    # it (the refresh token it replaces dies at Garmin), and a stopping
                    # replica claims nothing (ReplicaStopping).
                    rotating.enter_context(self.in_flight.holding())
                    claim_id: str | None = None
                    claimed: SessionRow | None = row
                    if asker.claims_every_kind or row.session_kind is SessionKind.DI_OAUTH2:
                        claim_id = secrets.token_urlsafe(CLAIM_ID_BYTES)
                        claimed = self._claim(
                            user_id,
                            expected_version,
                            claim_id,
                            unleased=unleased,
                            held_by=held_by,
                            keepalive=keepalive,
                        )
                    if claimed is None:
                        if not wait:
                            raise RefreshBusy(user_id)
                        # Another replica got there first, or (with `unleased`, `held_by`)
                        # the lease changed: look again.
                        continue
                    admission = self._admit(claimed, claim_id)
                    fresh = self._call_garmin(claimed, claim_id, asker, admission)
                if isinstance(fresh, Refreshed):
                    return fresh
                return self._store(claimed, fresh, asker)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """One of the replica's refreshes in flight. Inside an RPC, waited for only until
        the RPC must be answered (RefreshSlotsBusy then): past it nobody hears the answer,
        and the refresh would go on for a caller that left. Keep-alive, outside any RPC,
        waits its turn."""
        rpc_by = rpc_answer_by()
        timeout = (
            None
            if rpc_by is None
            else min(threading.TIMEOUT_MAX, max(0.0, rpc_by - time.monotonic()))
        )
        if not self._slots.acquire(timeout=timeout):
            raise RefreshSlotsBusy(
                "every refresh of this replica is out to Garmin; try again shortly"
            )
        try:
            yield
        finally:
            self._slots.release()

    def _may_wait(self, user_id: str, *, wait: bool, deadline: float) -> None:
        """Another claim is live: raise unless this caller waits, and may wait longer."""
        if not wait:
            raise RefreshBusy(user_id)
        if time.monotonic() > deadline:
            self._events.refresh_waited("timeout")
            raise StillRefreshingElsewhere("another replica is still refreshing this session")

    def _current(
        self, user_id: str, *, refusing_version: int | None = None
    ) -> tuple[SessionRow, GarminTokens, GarminRateLimited | None]:
        """The row, its tokens and, when the row is still at `refusing_version` with no live
        claim (the one case that would call Garmin next), the gate's refusal, in one
        transaction. Asked only then: the gate counts each refusal as a suppressed call, and
        a caller polling another replica's claim would count one every poll."""
        with self._uow() as uow:
            row = uow.leases.find(user_id)
            if row is None or row.state is not SessionState.ACTIVE or not row.session_ciphertext:
                raise SessionNotActive("the session is no longer active")
            claimed = refresh_claimed(row, uow.now)
            refused = None
            if refusing_version == row.session_version and not claimed:
                refused = self._gate.refusal(uow, user_id, _endpoints(row))
            return row, uow.sessions.open_tokens(row), refused

    def _admit(self, claimed: SessionRow, claim_id: str | None) -> Admission:
        """The gate's word just before the call (a breaker may have opened since we looked)."""
        try:
            return self._gate.admit(claimed.user_id, _endpoints(claimed))
        except BaseException:
            self._release(claimed.user_id, claim_id)
            raise

    def _claim(
        self,
        user_id: str,
        version: int,
        claim_id: str,
        *,
        unleased: bool,
        held_by: str | None = None,
        keepalive: bool = False,
    ) -> SessionRow | None:
        with self._uow() as uow:
            until = uow.now + timedelta(seconds=self._settings.claim_lifetime_seconds)
            return uow.refreshes.claim(
                user_id,
                version=version,
                claim_id=claim_id,
                now=uow.now,
                until=until,
                unleased=unleased,
                held_by=held_by,
                keepalive=keepalive,
            )

    def _release(self, user_id: str, claim_id: str | None) -> None:
        if claim_id is None:
            return
        try:
            with self._uow() as uow:
                uow.refreshes.release(user_id, claim_id=claim_id)
        # The claim then simply expires; only the type is logged (driver messages can echo
        # connection parameters).
        except Exception as exc:  # noqa: BLE001
            log.warning("refresh claim of user %s not released (%s)", user_id, type(exc).__name__)

    # --- Garmin ----------------------------------------------------------------------------

    def _call_garmin(
        self,
        claimed: SessionRow,
        claim_id: str | None,
        asker: RefreshAsker,
        admission: Admission,
    ) -> GarminTokens | Refreshed:
        user_id = claimed.user_id
        kind = claimed.session_kind.value if claimed.session_kind else "UNKNOWN"
        started = time.monotonic()
        try:
            with self._uow() as uow:
                tokens = uow.sessions.open_tokens(claimed)
            # Outside any transaction: nothing is locked while Garmin answers.
            fresh = self._upstream.refresh(tokens)
        except GarminSessionRejected as rejected:
            self._gate.answered(admission)
            outcome, result = self._rejected(claimed, rejected, asker)
            self._events.refresh_finished(kind, outcome, time.monotonic() - started)
            if result is None:
                raise
            return result
        except GarminRateLimited as limited:
            # Before the claim is released: the callers waiting on it must find the cooldown.
            self._gate.rate_limited(admission, limited, asker.rpc)
            self._release(user_id, claim_id)
            self._events.refresh_finished(kind, "rate_limited", time.monotonic() - started)
            raise
        except GarminRefusalInDoubt as doubtful:
            # Garmin answered (a 401 it may mean for our consumer or clock): the probe closes.
            self._gate.answered(admission)
            try:
                newer = self._refused_in_doubt(claimed, doubtful, asker)
            except BaseException as exc:
                self._release(user_id, claim_id)
                self._events.refresh_finished(kind, _outcome(exc), time.monotonic() - started)
                raise
            self._events.refresh_finished(kind, "superseded", time.monotonic() - started)
            return newer
        except GarminUnavailable:
            self._gate.unanswered(admission)
            self._release(user_id, claim_id)
            self._events.refresh_finished(kind, "unavailable", time.monotonic() - started)
            raise
        except Exception:
            self._gate.unanswered(admission)
            self._release(user_id, claim_id)
            self._events.refresh_finished(kind, "error", time.monotonic() - started)
            raise
        self._gate.answered(admission)
        self._events.refresh_finished(kind, "rotated", time.monotonic() - started)
        return fresh

    def _rejected(
        self, claimed: SessionRow, rejected: GarminSessionRejected, asker: RefreshAsker
    ) -> tuple[str, Refreshed | None]:
        """End the session Garmin rejected, unless the row has moved on meanwhile (then the
        rejection is about a token nobody uses any more: the newer tokens are the answer)."""
        user_id = claimed.user_id
        with self._uow() as uow:
            locked = uow.sessions.lock(user_id)
            if (
                locked is not None
                and locked.session_version == claimed.session_version
                and locked.state is SessionState.ACTIVE
            ):
                _end_session(uow, locked, rejected, asker)
                log.info("session of user %s ended: Garmin rejected its refresh", user_id)
                return "rejected", None
            if locked is None or locked.state is not SessionState.ACTIVE:
                raise SessionNotActive("the session is no longer active")
            newer = Refreshed(uow.sessions.open_tokens(locked), locked, by_us=False)
        log.info("user %s: Garmin rejected a token the session no longer holds", user_id)
        return "superseded", newer

    def _refused_in_doubt(
        self, claimed: SessionRow, doubtful: GarminRefusalInDoubt, asker: RefreshAsker
    ) -> Refreshed:
        """Garmin refused the garth session's exchange in doubt: keep the session and raise
        `doubtful`, the first such refusal since its tokens changed noted in the row; or, once
        that first one is the grace old (policies.doubtful_refusal_ends), end the session as
        a believed 401 does and raise GarminSessionRejected. When the row has moved on
        meanwhile, the newer tokens are the answer (as for a rejection)."""
        user_id = claimed.user_id
        grace = self._settings.garth_refusal_grace_seconds
        with self._uow() as uow:
            locked = uow.sessions.lock(user_id)
            if locked is None or locked.state is not SessionState.ACTIVE:
                raise SessionNotActive("the session is no longer active")
            if locked.session_version != claimed.session_version:
                newer = Refreshed(uow.sessions.open_tokens(locked), locked, by_us=False)
                log.info("user %s: Garmin refused a token the session no longer holds", user_id)
                return newer
            first = locked.first_doubtful_refusal_at
            rejected = None
            if doubtful_refusal_ends(first, uow.now, grace):
                assert first is not None
                rejected = GarminSessionRejected(
                    "Garmin has refused the session's token exchange (HTTP 401) since "
                    f"{first.isoformat(timespec='seconds')}, longer than "
                    f"GARMIN_AUTH_GARTH_REFUSAL_GRACE ({grace:g} s): taken as the session's end"
                )
                _end_session(uow, locked, rejected, asker)
            elif first is None:
                uow.sessions.note_doubtful_refusal(
                    user_id, version=locked.session_version, now=uow.now
                )
        # Raised once the transaction has committed what it wrote.
        if rejected is None:
            raise doubtful
        log.warning(
            "session of user %s ended: Garmin has refused its garth token exchange in doubt "
            "for longer than GARMIN_AUTH_GARTH_REFUSAL_GRACE",
            user_id,
        )
        raise rejected

    # --- storing ---------------------------------------------------------------------------

    def _store(self, claimed: SessionRow, fresh: GarminTokens, asker: RefreshAsker) -> Refreshed:
        user_id = claimed.user_id
        since = time.monotonic()
        stored = commit_retried(
            lambda: self._commit(claimed, fresh, asker),
            seconds=self._settings.commit_retry_seconds,
            what="rotated tokens",
            user_id=user_id,
        )
        self._events.rotated_pair_unstored(time.monotonic() - since)
        if stored is not None:
            return Refreshed(fresh, stored, by_us=True)
        # A login or import replaced the session while Garmin answered: it wins, and the
        # pair of the session it replaced is dropped.
        log.info("user %s: session replaced during its refresh; refreshed tokens dropped", user_id)
        row, tokens, _ = self._current(user_id)
        return Refreshed(tokens, row, by_us=False)

    def _commit(
        self, claimed: SessionRow, fresh: GarminTokens, asker: RefreshAsker
    ) -> SessionRow | None:
        user_id = claimed.user_id
        window = timedelta(seconds=self._settings.keepalive_window_seconds)
        with self._uow() as uow:
            # `claimed` holds the refresh token Garmin just rotated away: the row keeps its
            # digest, so an import retrying with it is known for a retry (session_import).
            row = uow.refreshes.store_rotated(
                user_id,
                version=claimed.session_version,
                tokens=fresh,
                now=uow.now,
                keepalive_not_before=keepalive_not_before(fresh, uow.now, window),
                replaced=claimed,
            )
            if row is not None:
                lease = live_lease(row, uow.now)
                uow.audit.record(asker.rpc, audit.SESSION_REFRESHED, user_id=user_id, lease=lease)
            return row


def _end_session(
    uow: UnitOfWork, locked: SessionRow, rejected: GarminSessionRejected, asker: RefreshAsker
) -> None:
    """In `uow`, on the row locked at the version Garmin refused: the session ends
    (AUTH_EXPIRED, secrets wiped, lease and claim ended: one statement), and the audit trail
    and change log say so."""
    ended = live_lease(locked, uow.now)
    uow.sessions.invalidate(
        locked.user_id,
        version=locked.session_version,
        reason=asker.reason_for(rejected.message),
        now=uow.now,
    )
    outcome = asker.rejected_outcome or audit.outcome_of(rejected)
    # An error answered, and the session's end: the change log carries it.
    uow.audit.record(asker.rpc, outcome, user_id=locked.user_id, lease=ended, changed=True)


def _outcome(exc: BaseException) -> str:
    """A failed refresh as REFRESH_OUTCOMES names it."""
    if isinstance(exc, GarminSessionRejected):
        return "rejected"
    if isinstance(exc, GarminRateLimited):
        return "rate_limited"
    if isinstance(exc, GarminUnavailable):
        return "unavailable"
    return "error"


def _endpoints(row: SessionRow) -> tuple[GarminEndpoint, ...]:
    return endpoints_of(GarminCall.REFRESH, row.session_kind)


def _refuse_if_leased(row: SessionRow, now: datetime) -> None:
    if (lease := live_lease(row, now)) is not None:
        raise LeaseHeld(
            f"the session is leased by {lease.holder!r} until {lease.expires_at.isoformat()}: "
            "its refresh belongs to the lease holder"
        )


def _refuse_unless_held(row: SessionRow, now: datetime, lease_digest: str) -> None:
    if live_lease_of(row, lease_digest, now) is None:
        raise LeaseLost("the lease is expired, released, taken over or unknown")
