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
    GarminSessionRejected,
    GarminUnavailable,
    UpstreamError,
)
from garmin_client.errors import GarminError, RateLimited, SessionRejected


def as_domain(error: GarminError) -> UpstreamError:
    if isinstance(error, SessionRejected):
        return GarminSessionRejected(error.message)
    if isinstance(error, RateLimited):
        return GarminRateLimited(error.message, error.retry_after_seconds)
    return GarminUnavailable(error.message)


@contextlib.contextmanager
def domain_errors() -> Iterator[None]:
    """Raise garmin_client's errors leaving the block as the domain's (without chaining)."""
    try:
        yield
    except GarminError as error:
        raise as_domain(error) from None
