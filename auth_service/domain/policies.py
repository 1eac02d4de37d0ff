"""The service's policies as plain values: lease lifetimes, login throttling, MFA challenges.

auth_service.config reads them from the environment; the use cases only ever see these.
"""

from __future__ import annotations

from dataclasses import dataclass


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
