"""The gate every call to Garmin passes: Garmin's 429s honoured across every replica.

Before a call: refused (GarminRateLimited with the time left, Garmin not called) while the
account waits out a 429 or while a breaker of an endpoint the call may reach is open; when a
breaker is half-open, the call becomes its one probe, or is refused while another call
probes. Sign-ins and validations are also one at a time per account (`exclusive`): two at
once would both meet the same 429 (refreshes are one at a time by their own claim).

After a 429: the account's cooldown starts (an audit event says so), the endpoint's
429 is counted, and the breaker opens when the count reaches the threshold or the call was
the probe. A probe that Garmin answered otherwise closes the breaker; one that got no answer
lets the next call probe. The rules and their settings: auth_service.domain.garmin_limits.

State lives in the database (two small tables, migration 0008), read in one short
transaction before the call: a refresh in the steady state costs one read (its own claim
already makes it one at a time); a sign-in also writes its claim and its release.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from auth_service.domain import audit, passed_429s
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.context import answer_by
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminRefusalInDoubt,
    GarminUnavailable,
    UpstreamError,
)
from auth_service.domain.events import LimitEvents, NoLimitEvents
from auth_service.domain.garmin_limits import (
    AccountLimit,
    Breaker,
    BreakerPhase,
    GarminEndpoint,
    GarminLimitSettings,
)
from auth_service.services.unit_of_work import UnitOfWork, UnitsOfWork

log = logging.getLogger(__name__)

# The wait suggested to a call refused because another of the account is with Garmin.
IN_FLIGHT_RETRY_SECONDS = 2.0
# How often a caller waiting for another's call looks at the account again.
WAIT_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Admission:
    """A call let through: for whom, to which endpoints, and the breakers it probes."""

    user_id: str | None
    endpoints: tuple[GarminEndpoint, ...]
    probes: frozenset[GarminEndpoint] = field(default_factory=frozenset)
    # Until when the account's one call was claimed for this one (None: not claimed). It
    # names the claim: releasing it releases nothing a later call claimed after it expired.
    claimed_until: datetime | None = None
    # Until when its probes were claimed: it names them, so settling them settles nothing a
    # later probe claimed after they ran out (None: no probe).
    probe_until: datetime | None = None
    # Endpoints the call turned out not to reach (a sign-in that stopped at the SSO): their
    # probes are handed to the next call when it is settled, never closed by its answer.
    unreached: set[GarminEndpoint] = field(default_factory=set)
    # Probes settled already (answered_keeping_call): the settle at the end leaves them.
    settled: set[GarminEndpoint] = field(default_factory=set)
    # Endpoints that answered a 429 the call went on past, whose record the database
    # refused: their probes are released when the call ends, never closed (Garmin's answer
    # was a 429, not a sign that calls may resume).
    unrecorded_429s: set[GarminEndpoint] = field(default_factory=set)

    def did_not_reach(self, *endpoints: GarminEndpoint) -> None:
        self.unreached.update(endpoints)

    @property
    def not_closing(self) -> set[GarminEndpoint]:
        """The probes its answer must not close: endpoints not reached, or whose answer was
        a 429 left unrecorded."""
        return self.unreached | self.unrecorded_429s


class GarminGate:
    """Admits calls to Garmin and records its 429s, for one replica (the state is shared)."""

    def __init__(
        self,
        uow: UnitsOfWork,
        settings: GarminLimitSettings,
        events: LimitEvents | None = None,
    ) -> None:
        self._uow = uow
        self._settings = settings
        self._events = events or NoLimitEvents()

    # --- before -----------------------------------------------------------------------------

    def refusal(
        self, uow: UnitOfWork, user_id: str | None, endpoints: tuple[GarminEndpoint, ...]
    ) -> GarminRateLimited | None:
        """Inside the caller's transaction, reading only: why a call would be refused now
        (None: it would be let through or probe). For callers that check before claiming."""
        refused = self._read_refusal(uow, user_id, endpoints, uow.limits.breakers(endpoints))
        if refused is None:
            return None
        endpoint, reason, wait = refused
        return self._refused(endpoint, reason, wait)

    def admit(
        self,
        user_id: str | None,
        endpoints: tuple[GarminEndpoint, ...],
        *,
        exclusive: bool = False,
        hold_seconds: float | None = None,
        count_in_flight: bool = True,
    ) -> Admission:
        """Let a call through (`exclusive`: as the account's only one in flight, for at most
        `hold_seconds`, by default probe_seconds), or raise GarminRateLimited (Garmin not
        called). `count_in_flight=False`: a refusal because the account's call is out is
        not counted as a suppressed call (the caller waits for it: wait_for_call counts the
        refusal it may end with)."""
        with self._uow() as uow:
            breakers = uow.limits.breakers(endpoints)
            refused = self._read_refusal(uow, user_id, endpoints, breakers)
            claimed_until = None
            if refused is None and exclusive and user_id is not None:
                hold = self._settings.probe_seconds if hold_seconds is None else hold_seconds
                claimed_until = uow.now + timedelta(seconds=hold)
                refused = self._claim_call(uow, user_id, endpoints, claimed_until)
            if refused is None:
                claimed_probes = self._claim_probes(uow, breakers)
                if claimed_probes is not None:
                    probes, probe_until = claimed_probes
                    return Admission(
                        user_id,
                        endpoints,
                        probes,
                        claimed_until=claimed_until,
                        probe_until=probe_until if probes else None,
                    )
                refused = (endpoints[0], "breaker_open", self._settings.probe_seconds)
            # Raised inside: the transaction rolls back whatever was claimed.
            endpoint, reason, wait = refused
            raise self._refused(
                endpoint, reason, wait, counted=count_in_flight or reason != "in_flight"
            )

    def wait_for_call(
        self,
        user_id: str,
        endpoints: tuple[GarminEndpoint, ...],
        wait_seconds: float | None = None,
    ) -> None:
        """Wait until the account's claimed call is over (at most `wait_seconds`, by default
        probe_seconds, and never past the RPC's answer time); raises the gate's refusal
        when it left a cooldown (or a breaker) behind, and the in-flight refusal when the call
        is still out."""
        wait = self._settings.probe_seconds if wait_seconds is None else wait_seconds
        deadline = answer_by(time.monotonic() + wait)
        while time.monotonic() < deadline:
            with self._uow() as uow:
                account = uow.limits.account(user_id)
                if account is None or not account.call_out(uow.now):
                    refused = self.refusal(uow, user_id, endpoints)
                    if refused is not None:
                        raise refused
                    return
            time.sleep(WAIT_POLL_SECONDS)
        raise self._refused(endpoints[0], "in_flight", IN_FLIGHT_RETRY_SECONDS)

    def _claim_call(
        self,
        uow: UnitOfWork,
        user_id: str,
        endpoints: tuple[GarminEndpoint, ...],
        until: datetime,
    ) -> tuple[GarminEndpoint, str, float] | None:
        sign_in = GarminEndpoint.SSO in endpoints
        if uow.limits.claim_call(user_id, uow.now, until, despite_sign_in_cooldown=not sign_in):
            return None
        account = uow.limits.account(user_id)
        ends = None if account is None else _cooling_for(account, uow.now, endpoints)
        if account is not None and ends is not None:
            # Claimed and answered 429 since we looked: the cooldown is the answer.
            wait = _seconds(ends - uow.now)
            return account.endpoint or endpoints[0], "account_cooldown", wait
        # The call under way ends within seconds (a claim only outlives a dead replica's):
        # ask again then, when its outcome (a session, or a cooldown) is known.
        return endpoints[0], "in_flight", IN_FLIGHT_RETRY_SECONDS

    def _read_refusal(
        self,
        uow: UnitOfWork,
        user_id: str | None,
        endpoints: tuple[GarminEndpoint, ...],
        breakers: list[Breaker],
    ) -> tuple[GarminEndpoint, str, float] | None:
        now = uow.now
        account = uow.limits.account(user_id) if user_id is not None else None
        ends = None if account is None else _cooling_for(account, now, endpoints)
        if account is not None and ends is not None:
            endpoint = account.endpoint or endpoints[0]
            return endpoint, "account_cooldown", _seconds(ends - now)
        for breaker in breakers:
            phase = breaker.phase(now)
            if phase is BreakerPhase.OPEN:
                assert breaker.open_until is not None
                return breaker.endpoint, "breaker_open", _seconds(breaker.open_until - now)
            if phase is BreakerPhase.HALF_OPEN and breaker.probe_out(now):
                assert breaker.probe_until is not None
                return breaker.endpoint, "breaker_open", _seconds(breaker.probe_until - now)
        return None

    def _claim_probes(
        self, uow: UnitOfWork, breakers: list[Breaker]
    ) -> tuple[frozenset[GarminEndpoint], datetime] | None:
        """Claim the probe of every half-open breaker among `breakers`, as read in this
        transaction, and until when (None: another call took one first)."""
        now = uow.now
        half_open = [
            breaker.endpoint for breaker in breakers if breaker.phase(now) is BreakerPhase.HALF_OPEN
        ]
        until = now + timedelta(seconds=self._settings.probe_seconds)
        for endpoint in half_open:
            if not uow.limits.claim_probe(endpoint, now, until):
                return None  # the transaction rolls back with the refusal: no probe kept
        return frozenset(half_open), until

    def lease_refusal(self, uow: UnitOfWork, user_id: str) -> GarminRateLimited | None:
        """Inside the caller's transaction: why a lease on the account is refused now (None:
        it is not), which is while a Connect API cooldown runs. Its access token goes to that
        API, and the worker that took it there would meet the 429 again; other cooldowns
        hold back the service's own calls only (a lease is granted with a token that works)."""
        account = uow.limits.account(user_id)
        if account is None or not account.connect_api_cooling(uow.now):
            return None
        assert account.cooling_until is not None
        wait = _seconds(account.cooling_until - uow.now)
        return self._refused(GarminEndpoint.CONNECT_API, "account_cooldown", wait)

    @property
    def exclusive_hold_seconds(self) -> float:
        """How long an exclusive call's claim lasts (probe_seconds): a claim outlives the
        call only when its replica died making it, and then holds the account back this
        long. Claims of the caller's own for the same call (the sign-in's per Garmin
        account) last as long, so neither outlives the other."""
        return self._settings.probe_seconds

    def in_flight_refusal(self, endpoint: GarminEndpoint) -> GarminRateLimited:
        """The answer to a call refused because the account's one call is under way, for
        callers that hold such a claim of their own (the sign-in's per Garmin account)."""
        return self._refused(endpoint, "in_flight", IN_FLIGHT_RETRY_SECONDS)

    def suppressed(self, endpoint: GarminEndpoint, reason: str) -> None:
        """Count a call answered without Garmin for a reason of the caller's own."""
        self._events.call_suppressed(endpoint.value, reason)

    def _refused(
        self, endpoint: GarminEndpoint, reason: str, wait: float, *, counted: bool = True
    ) -> GarminRateLimited:
        if counted:
            self.suppressed(endpoint, reason)
        what = {
            "account_cooldown": "this account is waiting out Garmin's rate limit",
            "in_flight": "another sign-in or import of this account is with Garmin right now",
        }.get(reason, f"Garmin's {endpoint.value} endpoint is rate-limiting this service")
        refusal = GarminRateLimited(f"{what}; retry in {wait:.0f}s", retry_after_seconds=wait)
        refusal.held_back = reason
        return refusal

    # --- after ------------------------------------------------------------------------------

    def rate_limited(
        self,
        admission: Admission,
        error: GarminRateLimited,
        rpc: AuditedRpc,
        *,
        call_ended: bool = True,
    ) -> None:
        """Garmin answered 429: start the account's cooldown, count the endpoint's 429, open
        its breaker when due. Sets the error's retry_after_seconds to the wait imposed.
        `call_ended=False`: the call went on past the 429 (auth_service.domain.passed_429s);
        its claim and its other probes are settled when it ends."""
        wait = self._settings.wait_for(error.retry_after_seconds)
        endpoint = error.endpoint or admission.endpoints[-1]
        error.retry_after_seconds = wait
        try:
            opened = self._record_429(admission, endpoint, wait, rpc, call_ended=call_ended)
        # The 429 still reaches the caller; only the record of it is lost (the type only:
        # driver messages can echo connection parameters).
        except Exception as exc:  # noqa: BLE001
            log.error(  # noqa: TRY400
                "Garmin's 429 at %s for user %s not recorded (%s)",
                endpoint.value,
                admission.user_id,
                type(exc).__name__,
            )
            if not call_ended:
                admission.unrecorded_429s.add(endpoint)
            return
        if not call_ended:
            # Committed: the probe was settled by the record (a failed commit leaves it to
            # be released when the call ends, above).
            admission.settled.add(endpoint)
        self._events.rate_limited(endpoint.value, opened)
        log.warning(
            "Garmin answered 429 at %s for user %s; holding back %.0fs%s",
            endpoint.value,
            admission.user_id,
            wait,
            " (breaker open for every account)" if opened else "",
        )

    def reported_429(
        self,
        uow: UnitOfWork,
        user_id: str,
        endpoint: GarminEndpoint,
        retry_after_seconds: float | None,
        rpc: AuditedRpc,
    ) -> float:
        """Inside the caller's transaction: Garmin answered 429 to a call the service did not
        make (a worker's, at the Connect API, reported when it released the user's lease).
        The account's cooldown starts as for a 429 of the service's own, for the same wait
        (Retry-After capped at max_wait_seconds; default_wait_seconds for none or zero), so
        every replica's calls for it, and its leases (lease_refusal), wait it out. The
        breaker is not counted: it stands for this service's own calls to the endpoint.
        Returns the wait."""
        wait = self._settings.wait_for(retry_after_seconds)
        _start_cooldown(uow, user_id, endpoint, uow.now + timedelta(seconds=wait), rpc)
        log.warning(
            "a worker met Garmin's 429 at %s for user %s; holding back %.0fs",
            endpoint.value,
            user_id,
            wait,
        )
        return wait

    def _record_429(
        self,
        admission: Admission,
        endpoint: GarminEndpoint,
        wait: float,
        rpc: AuditedRpc,
        *,
        call_ended: bool,
    ) -> bool:
        """Start the cooldown, count the 429, open the breaker when due (True: opened)."""
        opened = False
        with self._uow() as uow:
            until = uow.now + timedelta(seconds=wait)
            if admission.user_id is not None:
                _start_cooldown(uow, admission.user_id, endpoint, until, rpc)
            if self._settings.breaker_threshold > 0:
                count = uow.limits.count_rate_limited(
                    endpoint, uow.now, timedelta(seconds=self._settings.breaker_window_seconds)
                )
                probed = endpoint in admission.probes - admission.settled
                if probed or count >= self._settings.breaker_threshold:
                    uow.limits.open_breaker(endpoint, until)
                    opened = True
            if not call_ended:
                # Its probe is settled (by the 429) once this commits; the rest when the
                # call ends.
                return opened
            for other in admission.probes - admission.settled - {endpoint}:
                assert admission.probe_until is not None
                uow.limits.release_probe(other, admission.probe_until)
            if admission.claimed_until is not None and admission.user_id is not None:
                uow.limits.release_call(admission.user_id, admission.claimed_until)
        return opened

    def answered(self, admission: Admission) -> None:
        """Garmin answered (anything but 429): the breakers this call probed close, those of
        endpoints it did not reach wait for another probe."""
        closed = admission.probes - admission.settled - admission.not_closing
        if self._settle(admission, close=True) and closed:
            log.info("Garmin answered the probe at %s: calls resume", _names(closed))

    def answered_keeping_call(self, admission: Admission) -> None:
        """Garmin answered, and the caller still has to store what it got: the breakers the
        call probed close now (calls of every account resume at once), while the account's
        call stays claimed until the caller settles it (answered or unanswered)."""
        closed = admission.probes - admission.settled - admission.not_closing
        if self._settle(admission, close=True, release_call=False) and closed:
            log.info("Garmin answered the probe at %s: calls resume", _names(closed))
        admission.settled.update(admission.probes)

    def unanswered(self, admission: Admission) -> None:
        """The call got no answer from Garmin (or was not made): another call may probe."""
        self._settle(admission, close=False)

    def _settle(self, admission: Admission, *, close: bool, release_call: bool = True) -> bool:
        """Close the probed breakers (or let another call probe) and release the account's
        claimed call; False when nothing was to do or the database refused (the claims then
        expire after probe_seconds, the account's after its hold)."""
        probes = admission.probes - admission.settled
        release = release_call and admission.claimed_until is not None
        if not probes and not release:
            return False
        try:
            with self._uow() as uow:
                for endpoint in probes:
                    assert admission.probe_until is not None
                    if close and endpoint not in admission.not_closing:
                        uow.limits.close_breaker(endpoint, admission.probe_until)
                    else:
                        uow.limits.release_probe(endpoint, admission.probe_until)
                if release and admission.user_id is not None:
                    assert admission.claimed_until is not None
                    uow.limits.release_call(admission.user_id, admission.claimed_until)
        except Exception as exc:  # noqa: BLE001 - see rate_limited
            log.warning("probe of %s not settled (%s)", _names(probes), type(exc).__name__)
            return False
        return True

    @contextmanager
    def calling(
        self,
        user_id: str | None,
        endpoints: tuple[GarminEndpoint, ...],
        rpc: AuditedRpc,
        *,
        exclusive: bool = False,
        hold_seconds: float | None = None,
        count_in_flight: bool = True,
    ) -> Iterator[Admission]:
        """Admit the block's call to Garmin (admit) and settle its answer."""
        admission = self.admit(
            user_id,
            endpoints,
            exclusive=exclusive,
            hold_seconds=hold_seconds,
            count_in_flight=count_in_flight,
        )
        with passed_429s.noting() as passed:
            try:
                yield admission
            except BaseException as exc:
                self._went_past(admission, passed, rpc)
                self._failed(admission, exc, rpc)
                raise
        self._went_past(admission, passed, rpc)
        self.answered(admission)

    def _went_past(
        self, admission: Admission, passed: list[GarminRateLimited], rpc: AuditedRpc
    ) -> None:
        """The 429s the call went on past (auth_service.domain.passed_429s), honoured as any
        other: Garmin asked us to stop calling that endpoint whether or not the call needed
        the answer."""
        for error in passed:
            self.rate_limited(admission, error, rpc, call_ended=False)

    def _failed(self, admission: Admission, exc: BaseException, rpc: AuditedRpc) -> None:
        if isinstance(exc, GarminRateLimited):
            self.rate_limited(admission, exc, rpc)
        elif isinstance(exc, GarminRefusalInDoubt):
            # Garmin's 401 to an exchange it judged (the session's, or our consumer's): the
            # endpoint answers, so the probe closes the breaker; no outage to wait out.
            self.answered(admission)
        elif isinstance(exc, GarminUnavailable):
            self.unanswered(admission)
        elif isinstance(exc, UpstreamError):
            # A refusal is an answer: the endpoint works. It is the first endpoint's the call
            # reaches (a sign-in's SSO); whether the call went further is not known.
            admission.did_not_reach(*admission.endpoints[1:])
            self.answered(admission)
        else:
            self.unanswered(admission)


def _start_cooldown(
    uow: UnitOfWork, user_id: str, endpoint: GarminEndpoint, until: datetime, rpc: AuditedRpc
) -> None:
    """In `uow`: the account's cooldown until `until` (a later end wins), recorded when it
    starts one. The account's cooldown, not its session: nothing for the change log."""
    if uow.limits.start_account_cooldown(user_id, endpoint, until, uow.now):
        uow.audit.record(rpc, audit.COOLDOWN_STARTED, user_id=user_id, changed=False)


def _seconds(delta: timedelta) -> float:
    return max(delta.total_seconds(), 0.0)


def _names(endpoints: frozenset[GarminEndpoint]) -> str:
    return ", ".join(sorted(e.value for e in endpoints))


def _cooling_for(
    account: AccountLimit, now: datetime, endpoints: tuple[GarminEndpoint, ...]
) -> datetime | None:
    """When the account's cooldown that holds back a call to `endpoints` ends (None: none
    does). One that Garmin's sign-in (SSO) started holds back sign-ins only: the SSO limits
    how often an account logs in, and the way in while it refuses us, a service ticket the
    user got in a browser, goes to the token endpoint within the ticket's minute. A cooldown
    any other endpoint started holds back every call for the account."""
    return account.cooling_for(now, sign_in=GarminEndpoint.SSO in endpoints)
