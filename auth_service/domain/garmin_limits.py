"""How the service treats Garmin's rate limits: the endpoints it calls, the settings, and the
state it shares with every replica (per-account cooldowns, one breaker per endpoint).

Garmin answers a caller that asks too often with 429 and, when it goes on asking, with
blocks that last hours to days, per account and per IP. So after a 429:

* the account is not sent to Garmin again, for any call, until Garmin's Retry-After has
  passed (`default_wait_seconds` when Garmin gives none; never more than `max_wait_seconds`);
* each 429 counts against the endpoint that gave it; `breaker_threshold` of them within
  `breaker_window_seconds`, across accounts, open the endpoint's breaker: no replica calls
  it until the wait has passed; then one call (the probe) goes through, and its answer closes
  the breaker or opens it again.

Standard library only: the use cases (auth_service.services.garmin_gate) apply it, storage
keeps the state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from auth_service.domain.models import SessionKind


class GarminEndpoint(enum.StrEnum):
    """The Garmin endpoints the service calls, as the breakers and metrics name them."""

    # Sign-in and MFA (the DI flow's mobile JSON login, garth's SSO pages).
    SSO = "sso"
    # diauth's token endpoint: DI ticket exchanges and refreshes.
    DI_TOKEN = "di_token"  # noqa: S105 (a name, not a secret)
    # connectapi's OAuth endpoints garth uses: preauthorized and the OAuth1 -> OAuth2 exchange.
    OAUTH_EXCHANGE = "oauth_exchange"
    # The Connect API itself (validation's profile call).
    CONNECT_API = "connect_api"


class GarminCall(enum.Enum):
    """What the service asks of Garmin."""

    LOGIN = "login"
    RESUME_MFA = "resume_mfa"
    EXCHANGE_TICKET = "exchange_ticket"
    REFRESH = "refresh"
    VALIDATE = "validate"


def endpoints_of(call: GarminCall, kind: SessionKind | None) -> tuple[GarminEndpoint, ...]:
    """The endpoints `call` may reach for a session (or sign-in) of `kind`; a call is only
    made while none of them has an open breaker."""
    token = (
        GarminEndpoint.DI_TOKEN if kind is SessionKind.DI_OAUTH2 else GarminEndpoint.OAUTH_EXCHANGE
    )
    if call in (GarminCall.LOGIN, GarminCall.RESUME_MFA):
        # A sign-in ends with its ticket exchanged for tokens.
        return (GarminEndpoint.SSO, token)
    if call is GarminCall.EXCHANGE_TICKET:
        return (GarminEndpoint.DI_TOKEN,)
    if call is GarminCall.REFRESH:
        return (token,)
    return (GarminEndpoint.CONNECT_API,)


@dataclass(frozen=True)
class GarminLimitSettings:
    """GARMIN_AUTH_RATE_LIMIT_* and GARMIN_AUTH_BREAKER_*, in seconds."""

    # How long an account waits after a 429 that carried no Retry-After.
    default_wait_seconds: float = 60.0
    # The longest wait any Retry-After can impose (a garbled header must not park an account
    # for a year).
    max_wait_seconds: float = 3600.0
    # 429s from one endpoint within the window that open its breaker (0: no breaker).
    breaker_threshold: int = 5
    breaker_window_seconds: float = 60.0
    # How long a half-open breaker's probe, or a claimed sign-in, may take before another
    # call may go: longer than one Garmin call with its retries.
    probe_seconds: float = 60.0

    def wait_for(self, retry_after_seconds: float | None) -> float:
        """How long to hold back after a 429 that asked for `retry_after_seconds`."""
        if retry_after_seconds is None or retry_after_seconds <= 0:
            return min(self.default_wait_seconds, self.max_wait_seconds)
        return min(retry_after_seconds, self.max_wait_seconds)


class BreakerPhase(enum.StrEnum):
    """Where an endpoint's breaker stands."""

    # Calls go through.
    CLOSED = "closed"
    # No call goes through until the wait has passed.
    OPEN = "open"
    # The wait has passed: one call (the probe) goes through; its answer decides.
    HALF_OPEN = "half_open"


def breaker_phase(open_until: datetime | None, now: datetime) -> BreakerPhase:
    """A breaker's phase at `now`, given when its wait ends (None: it is closed)."""
    if open_until is None:
        return BreakerPhase.CLOSED
    if open_until > now:
        return BreakerPhase.OPEN
    return BreakerPhase.HALF_OPEN


@dataclass(frozen=True)
class Breaker:
    """One endpoint's breaker as stored (shared by every replica)."""

    endpoint: GarminEndpoint
    # The counting window of 429s and how many arrived in it.
    window_started_at: datetime
    rate_limited_calls: int
    # Set while the breaker is open or half-open: when the wait ends.
    open_until: datetime | None
    # A half-open breaker's probe is out until then.
    probe_until: datetime | None

    def phase(self, now: datetime) -> BreakerPhase:
        return breaker_phase(self.open_until, now)

    def probe_out(self, now: datetime) -> bool:
        """Whether a half-open breaker's probe is still under way."""
        return self.probe_until is not None and self.probe_until > now


@dataclass(frozen=True)
class AccountLimit:
    """One account's state toward Garmin, shared by every replica."""

    user_id: str
    # After a 429 (from `endpoint`), no call for the account reaches Garmin before then
    # (one from the sign-in holds back sign-ins only: services.garmin_gate._cooling_for).
    cooling_until: datetime | None
    endpoint: GarminEndpoint | None
    # A sign-in (or validation) of the account is with Garmin until then: one at a time.
    call_claimed_until: datetime | None
    # A sign-in's cooldown that outlasts the one above, another endpoint's: sign-ins stay
    # held back until then, every other call only until cooling_until.
    sign_in_cooling_until: datetime | None = None

    def cooling(self, now: datetime) -> bool:
        return self.cooling_until is not None and self.cooling_until > now

    def cooling_for(self, now: datetime, sign_in: bool) -> datetime | None:
        """When the cooldown that holds back a call ends (`sign_in`: the call signs in),
        None when none does."""
        ends = []
        if self.cooling(now) and (sign_in or self.endpoint is not GarminEndpoint.SSO):
            ends.append(self.cooling_until)
        if sign_in and self.sign_in_cooling_until is not None:
            ends.append(self.sign_in_cooling_until)
        latest = max((end for end in ends if end is not None), default=None)
        return latest if latest is not None and latest > now else None

    def connect_api_cooling(self, now: datetime) -> bool:
        """Whether the account waits out a 429 of the Connect API itself (a worker's, or a
        validation's): a lease's access token would be taken straight back to it."""
        return self.endpoint is GarminEndpoint.CONNECT_API and self.cooling(now)

    def call_out(self, now: datetime) -> bool:
        return self.call_claimed_until is not None and self.call_claimed_until > now
