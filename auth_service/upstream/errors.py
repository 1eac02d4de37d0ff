"""garmin_client's errors as the domain's: the one place the providers translate them.

garmin_client answers only what the worker also needs (session rejected, rate limited,
unavailable); the refusals only a login can meet (GarminCredentialsRejected, MfaCodeRejected)
are raised as domain errors directly by the providers' sign-in modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from auth_service.domain.errors import (
    GarminRateLimited,
    GarminRefusalInDoubt,
    GarminSessionRejected,
    GarminUnavailable,
    UpstreamError,
)
from auth_service.domain.garmin_limits import GarminEndpoint
from garmin_client.errors import GarminError, RateLimited, RefusalInDoubt, SessionRejected


def as_domain(error: GarminError, endpoint: GarminEndpoint | None = None) -> UpstreamError:
    """The domain's error for `error`; a 429 names `endpoint` (whose breaker counts it)."""
    if isinstance(error, SessionRejected):
        return GarminSessionRejected(error.message)
    if isinstance(error, RateLimited):
        return GarminRateLimited(error.message, error.retry_after_seconds, endpoint)
    if isinstance(error, RefusalInDoubt):
        return GarminRefusalInDoubt(error.message)
    return GarminUnavailable(error.message, unanswered=getattr(error, "unanswered", False))


@contextlib.contextmanager
def domain_errors(endpoint: GarminEndpoint | None = None) -> Iterator[None]:
    """Raise garmin_client's errors leaving the block as the domain's (without chaining)."""
    try:
        yield
    except GarminError as error:
        raise as_domain(error, endpoint) from None
