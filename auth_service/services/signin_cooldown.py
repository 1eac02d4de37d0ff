"""The per-account sign-in cooldown: after Garmin answered 429 in a user's sign-in, the logins
of that user and of every user signed in to the same Garmin account (its email) are refused
(GARMIN_RATE_LIMITED, with RetryInfo) without calling Garmin, on every replica, until the
cooldown ends. Retrying into a 429 only extends Garmin's block. The sign-in page's (SSO) 429
costs the account hours (GARMIN_AUTH_SIGNIN_COOLDOWN); another endpoint's, or any with that
turned off, the wait Garmin asked for.

ExchangeServiceTicket is not held back: a ticket from the user's own browser is the way in
while Garmin blocks this server's sign-ins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from auth_service.domain import passed_429s
from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.policies import SIGNIN_RETRY_AFTER_MAX_SECONDS
from auth_service.domain.signin_accounts import SignInKeys
from auth_service.services.unit_of_work import UnitOfWork, UnitsOfWork

log = logging.getLogger(__name__)


class SignInCooldown:
    """Refuses logins during a user's cooldown; starts one when Garmin answers 429, lasting
    `seconds` or Garmin's Retry-After if longer, up to a day (0 seconds: no cooldown at
    all)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def refusal(self, uow: UnitOfWork, keys: SignInKeys) -> GarminRateLimited | None:
        """The answer to a login during the user's or its Garmin account's cooldown (None: no
        cooldown runs)."""
        until = uow.throttle.cooldown_until(keys)
        if until is None or until <= uow.now:
            return None
        wait = (until - uow.now).total_seconds()
        refusal = GarminRateLimited(
            f"Garmin rate-limited sign-ins for this account; retry in {wait:.0f}s",
            retry_after_seconds=wait,
        )
        # This account's own cooldown (ErrorInfo scope=user): other accounts may sign in.
        refusal.held_back = "account_cooldown"
        return refusal

    @contextmanager
    def watching(self, uow: UnitsOfWork, keys: SignInKeys) -> Iterator[None]:
        """Starts the user's and its account's cooldown when the block raises
        GarminRateLimited, or went on past one of the SSO's (auth_service.domain.passed_429s)."""
        with passed_429s.noting() as passed:
            try:
                yield
            except GarminRateLimited as limited:
                self._start_for_passed(uow, keys, passed)
                self._start_for(uow, keys, limited)
                raise
            except BaseException:
                self._start_for_passed(uow, keys, passed)
                raise
        self._start_for_passed(uow, keys, passed)

    def _start_for_passed(
        self, uow: UnitsOfWork, keys: SignInKeys, passed: list[GarminRateLimited]
    ) -> None:
        """The cooldown for 429s the block went on past. Its record alone may be lost: the
        block's own outcome (a sign-in Garmin completed, its ticket spent) must not be."""
        for limited in passed:
            try:
                self._start_for(uow, keys, limited)
            # The type only: driver messages can echo connection parameters.
            except Exception as exc:  # noqa: BLE001
                log.error(  # noqa: TRY400
                    "sign-in cooldown of user %s after Garmin's 429 not recorded (%s)",
                    keys.user_id,
                    type(exc).__name__,
                )

    def _start_for(self, uow: UnitsOfWork, keys: SignInKeys, limited: GarminRateLimited) -> None:
        """Start the user's and its account's cooldown for Garmin's 429 `limited`; sets its
        retry_after_seconds to the cooldown's length.

        The SSO's 429 (or one whose endpoint is unknown) costs the account `seconds` of
        sign-ins, or Garmin's Retry-After if longer. Any other 429 met in a sign-in (the
        token endpoint's), and every 429 with the cooldown turned off, holds the account's
        sign-ins back for the wait the gate imposed (Garmin's own, capped): the gate keys
        its cooldowns by user id, and another user id of the same Garmin account must not
        sign in straight into Garmin's 429 from any replica."""
        if limited.held_back is not None:
            return  # answered without Garmin (auth_service.services.garmin_gate)
        if self._seconds > 0 and limited.endpoint in (None, GarminEndpoint.SSO):
            # Garmin's Retry-After as it asked, not as capped for the account's other calls.
            asked = min(limited.asked_seconds or 0.0, SIGNIN_RETRY_AFTER_MAX_SECONDS)
            seconds = max(self._seconds, asked)
        else:
            # The gate's wait (auth_service.services.garmin_gate.rate_limited set it).
            seconds = limited.retry_after_seconds or 0.0
            if seconds <= 0:
                return
        with uow() as unit:
            unit.throttle.start_cooldown(keys, unit.now + timedelta(seconds=seconds), now=unit.now)
        log.warning(
            "Garmin answered 429 in a sign-in of user %s; no login for %.0fs to its Garmin account",
            keys.user_id,
            seconds,
        )
        limited.retry_after_seconds = seconds
