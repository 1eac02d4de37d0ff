"""Domain errors. The gRPC layer maps each class to a status code and an ErrorInfo reason
through one table (auth_service.api.errors); domain code never imports grpc.

Messages are shown to callers: they must never contain a secret.
"""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    """Base of every error the service answers on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


class InvalidArgument(DomainError):
    """The request is malformed; `violations` says which fields and why."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}")
        self.violations = list(violations)


class CallerUnauthenticated(DomainError):
    """No or an unknown caller credential."""


class CallerForbidden(DomainError):
    """The caller is known but its roles do not allow the RPC."""


class SessionNotFound(DomainError):
    """No session is stored for the user (or the user is unknown)."""


class MfaChallengeNotFound(DomainError):
    """The MFA challenge does not exist, expired, was superseded or used up its attempts."""


class MfaChallengeBusy(DomainError):
    """Another SubmitMfa for the same challenge is in flight; retry shortly."""


class SessionNotActive(DomainError):
    """The session exists but is not ACTIVE (MFA pending, AUTH_EXPIRED, not connected)."""


class LeaseLost(DomainError):
    """The lease is expired, released, taken over or never existed."""


class LeaseHeld(DomainError):
    """Another live lease holds the session."""


class LoginRateLimited(DomainError):
    """Too many logins for this user within the configured window; Garmin was not called."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds: float | None = retry_after_seconds


# --- What Garmin answered (raised by the upstream adapter) -----------------------------


class UpstreamError(DomainError):
    """Base of the errors that describe Garmin's answer."""


class GarminCredentialsRejected(UpstreamError):
    """Garmin refused the email/password."""


class MfaCodeRejected(UpstreamError):
    """Garmin refused the MFA code; the challenge stays usable."""


class GarminSessionRejected(UpstreamError):
    """Garmin definitely rejected the session (401 on the token exchange or on the API).

    This is the only upstream error that means the session is dead.
    """


class GarminRateLimited(UpstreamError):
    """Garmin answered 429. Try later; the session is not affected."""

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class GarminUnavailable(UpstreamError):
    """Garmin was unreachable, answered 5xx, timed out or answered something unreadable.

    Try later; the session is not affected.
    """
