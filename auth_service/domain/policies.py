"""The service's policies as plain values: lease lifetimes, login throttling, MFA challenges,
central refresh and keep-alive.

auth_service.config reads them from the environment; the use cases only ever see these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from auth_service.domain.models import GarminTokens, SessionKind

# An access token this close to its expiry is refreshed before use, so it does not lapse
# mid-call (the garth provider's validate uses the same margin).
ACCESS_EXPIRY_MARGIN = timedelta(seconds=30)


@dataclass(frozen=True)
class LeaseSettings:
    """Lease lifetimes, in seconds."""

    default_ttl: float = 300.0
    max_ttl: float = 3600.0
    # The shortest ttl a caller may ask for; shorter leases would expire mid-RPC.
    min_ttl: float = 5.0


@dataclass(frozen=True)
class LoginSettings:
    """Login throttling and MFA challenges."""

    limit: int = 5
    window_seconds: float = 3600.0
    mfa_challenge_ttl_seconds: float = 600.0
    mfa_max_wrong_codes: int = 3


@dataclass(frozen=True)
class RefreshSettings:
    """Central refresh (one replica per rotation) and keep-alive of DI sessions, in seconds."""

    # Refreshes in flight to Garmin at once, per replica, whatever asks for them.
    concurrency: int = 4
    # How long a claim on a refresh lasts: longer than one Garmin call can take (timeout x
    # attempts) plus a margin, so only a claim whose holder died ever expires.
    claim_seconds: float = 60.0
    # How long a refresh that found another replica's claim waits for its answer.
    wait_seconds: float = 70.0
    # How long a rotated pair is retried into a database that refuses the commit.
    commit_retry_seconds: float = 600.0
    # Keep-alive: how often, and how far ahead of the refresh token's death, it refreshes.
    keepalive_interval_seconds: float = 300.0
    keepalive_window_seconds: float = 604800.0
    # Sessions one keep-alive pass takes on at most (soonest expiry first).
    keepalive_batch: int = 1000


def refresh_due(tokens: GarminTokens, until: datetime) -> bool:
    """Whether `tokens` must be refreshed to stay usable until `until`: the access token
    expires by then or, for a DI session, its refresh token would die (or its expiry is
    unknown). Callers that use the token at once pass now + ACCESS_EXPIRY_MARGIN."""
    if tokens.oauth2.expires_at <= until:
        return True
    if tokens.kind is not SessionKind.DI_OAUTH2:
        return False
    dies_at = tokens.oauth2.refresh_token_expires_at
    return dies_at is None or dies_at <= until
