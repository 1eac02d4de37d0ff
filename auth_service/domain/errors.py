"""Domain errors. Each class names the answer it gives callers (`code_name`, a gRPC status
code name, and `reason`, the google.rpc.ErrorInfo reason): the one place that mapping is
written. auth_service.api.errors turns those names into gRPC values and the audit trail records
them, so domain code never imports grpc.

Messages are shown to callers: they must never contain a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from auth_service.domain.garmin_limits import GarminEndpoint


class DomainError(Exception):
    """Base of every error the service answers on purpose."""

    # The gRPC status code name and the ErrorInfo reason this error answers with.
    code_name: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = "INTERNAL"

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

    code_name = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation]) -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}")
        self.violations = list(violations)


class RefreshTokenImportedElsewhere(InvalidArgument):
    """An import brought the DI refresh token that the ACTIVE session of another user id was
    imported from. Refresh tokens rotate: two sessions refreshing from one token lose the
    account, so the import is refused before Garmin is asked, and nothing changes."""

    def __init__(self, field: str) -> None:
        super().__init__(
            [
                FieldViolation(
                    field,
                    "its refresh token was imported for another user id, whose session is "
                    "active: one Garmin session cannot serve two user ids (each refresh "
                    "rotates the refresh token); sign this user in instead, or disconnect "
                    "the other user id first",
                )
            ]
        )
        self.field = field


class CallerUnauthenticated(DomainError):
    """No or an unknown caller credential."""

    code_name = "UNAUTHENTICATED"
    reason = "CALLER_UNAUTHENTICATED"


class CallersFileInvalid(CallerUnauthenticated):
    """The callers file was edited into something unreadable: every caller is refused until
    it is fixed (a revoked token must not keep working on the old copy)."""

    reason = "CALLERS_FILE_INVALID"


class TooManyStreams(DomainError):
    """A capped kind of stream (server reflection) has all its slots taken."""

    code_name = "RESOURCE_EXHAUSTED"
    reason = "TOO_MANY_STREAMS"
    # Told to the caller (RetryInfo): streams end within seconds when their clients are done.
    retry_after_seconds: ClassVar[float] = 5.0


class CallerForbidden(DomainError):
    """The caller is known but its roles do not allow the RPC."""

    code_name = "PERMISSION_DENIED"
    reason = "CALLER_FORBIDDEN"
    # Whether the refusal is about the user named, not the caller: the same caller may
    # reach other users (ErrorInfo metadata scope=user tells its client so).
    about_user = False


class OutsideUserScope(CallerForbidden):
    """A scoped caller (user_id_prefix) named a user outside its scope."""

    about_user = True


class SessionNotFound(DomainError):
    """No session is stored for the user (or the user is unknown)."""

    code_name = "NOT_FOUND"
    reason = "SESSION_NOT_FOUND"


class MfaChallengeNotFound(DomainError):
    """The MFA challenge does not exist, expired, was superseded or used up its attempts."""

    code_name = "NOT_FOUND"
    reason = "MFA_CHALLENGE_NOT_FOUND"


class MfaChallengeBusy(DomainError):
    """Another SubmitMfa for the same challenge is in flight; retry shortly."""

    code_name = "ABORTED"
    reason = "MFA_CHALLENGE_BUSY"


class SessionNotActive(DomainError):
    """The session exists but is not ACTIVE (MFA pending, AUTH_EXPIRED, not connected)."""

    code_name = "FAILED_PRECONDITION"
    reason = "SESSION_NOT_ACTIVE"


class LeaseLost(DomainError):
    """The lease is expired, released, taken over or never existed."""

    code_name = "FAILED_PRECONDITION"
    reason = "LEASE_LOST"


class LeaseHeld(DomainError):
    """Another live lease holds the session."""

    code_name = "ABORTED"
    reason = "LEASE_HELD"


class SecretUnreadable(DomainError):
    """A stored secret (a session, an MFA challenge's SSO cookies) fails to decrypt: its key
    is not configured, or the ciphertext was altered, moved to another row or rolled back to
    an older one in the database. The message never contains key material."""

    code_name = "DATA_LOSS"
    reason = "SECRET_UNREADABLE"


class LoginRateLimited(DomainError):
    """Too many logins for this user within the configured window; Garmin was not called."""

    code_name = "RESOURCE_EXHAUSTED"
    reason = "LOGIN_RATE_LIMITED"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds: float | None = retry_after_seconds


class ValidateRateLimited(DomainError):
    """GetStatus(validate) for a user validated with Garmin too recently on this replica;
    Garmin was not called (issue 14: a caller must not turn validate into a Garmin flood)."""

    code_name = "RESOURCE_EXHAUSTED"
    reason = "VALIDATE_RATE_LIMITED"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds: float | None = retry_after_seconds


# --- What Garmin answered (raised by the upstream adapter) -----------------------------


class UpstreamError(DomainError):
    """Base of the errors that describe Garmin's answer."""

    # Raised by a SubmitMfa after Garmin accepted the code (the pending login spent): its
    # ticket's exchange failed. The challenge is over, since no code can succeed on it, and
    # sending the code again would only ask Garmin about a sign-in it has spent.
    pending_login_spent: bool = False


class GarminCredentialsRejected(UpstreamError):
    """Garmin refused the email/password."""

    code_name = "PERMISSION_DENIED"
    reason = "GARMIN_CREDENTIALS_REJECTED"


class MfaCodeRejected(UpstreamError):
    """Garmin refused the MFA code; the challenge stays usable."""

    code_name = "PERMISSION_DENIED"
    reason = "MFA_CODE_REJECTED"


class ServiceTicketRejected(UpstreamError):
    """Garmin refused a service ticket: used, expired, or issued for another service URL."""

    code_name = "FAILED_PRECONDITION"
    reason = "SERVICE_TICKET_REJECTED"


class GarminSessionRejected(UpstreamError):
    """Garmin definitely rejected the session (401 on the token exchange or on the API).

    This is the only upstream error that means the session is dead.
    """

    code_name = "FAILED_PRECONDITION"
    reason = "SESSION_NOT_ACTIVE"


class GarminRateLimited(UpstreamError):
    """Garmin answered 429. Try later; the session is not affected."""

    code_name = "RESOURCE_EXHAUSTED"
    reason = "GARMIN_RATE_LIMITED"

    def __init__(
        self,
        message: str,
        retry_after_seconds: float | None = None,
        endpoint: GarminEndpoint | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        # Garmin's own Retry-After, as it asked: retry_after_seconds becomes the wait the
        # service imposes (capped by services.garmin_gate), which the sign-in cooldown may
        # exceed (services.signin_cooldown).
        self.asked_seconds = retry_after_seconds
        # The endpoint that answered 429, when the provider knows it (its breaker counts it).
        self.endpoint = endpoint
        # Set when the service answered for Garmin, Garmin not called: why
        # ("account_cooldown", "breaker_open" or "in_flight"; services.garmin_gate).
        self.held_back: str | None = None

    @property
    def only_this_account(self) -> bool:
        """Held back by this account's own cooldown: other accounts' calls may go on."""
        return self.held_back == "account_cooldown"

    @property
    def another_call_in_flight(self) -> bool:
        """Held back because this account's one call to that endpoint is under way."""
        return self.held_back == "in_flight"


class GarminUnavailable(UpstreamError):
    """Garmin was unreachable, answered 5xx, timed out or answered something unreadable.

    Try later; the session is not affected. `unanswered`: the request may have reached Garmin
    and been acted on, its answer lost (a timeout or a broken connection after it was sent):
    an MFA code counts as judged then.
    """

    code_name = "UNAVAILABLE"
    reason = "GARMIN_UNAVAILABLE"

    def __init__(self, message: str, *, unanswered: bool = False) -> None:
        super().__init__(message)
        self.unanswered = unanswered


class GarminRefusalInDoubt(GarminUnavailable):
    """Garmin answered 401 to garth's token exchange while it may be refusing our OAuth
    consumer or clock rather than the session (auth_service.upstream.garth.
    exchange_refusals): the session is kept and the caller tries later, as for any
    GARMIN_UNAVAILABLE.

    Yet it is Garmin's answer about this one session, not an outage: LeaseNextSession skips
    the session instead of failing the call, the gate settles it as answered, and the
    session refresher ends a session refused so for longer than the grace (auth_service.
    domain.policies.doubtful_refusal_ends)."""


# --- WatchSessionEvents (issue 16) ---------------------------------------------------------


class TooManyWatchers(DomainError):
    """Every WatchSessionEvents slot of this replica is taken (GARMIN_AUTH_MAX_WATCHERS): a
    stream holds a server thread for as long as it lasts. Retry later or on another replica."""

    code_name = "RESOURCE_EXHAUSTED"
    reason = "TOO_MANY_WATCHERS"
    # RetryInfo: streams come and go; a few seconds is a fair wait.
    retry_after_seconds: float | None = 5.0


class StreamDisabled(DomainError):
    """This replica serves no WatchSessionEvents streams (GARMIN_AUTH_MAX_WATCHERS=0). Not a
    wait: no RetryInfo, so consumers do not call again every few seconds."""

    code_name = "UNIMPLEMENTED"
    reason = "STREAM_DISABLED"


class ConsumerTooSlow(DomainError):
    """A WatchSessionEvents consumer stopped reading: one event waited longer than
    GARMIN_AUTH_STREAM_SEND_TIMEOUT to be sent. Reconnect with the last cursor read."""

    code_name = "RESOURCE_EXHAUSTED"
    reason = "CONSUMER_TOO_SLOW"


class CursorExpired(DomainError):
    """WatchSessionEvents: changes after the cursor were pruned (prune-audit). Read the
    current statuses (ListSessions) and watch from an empty cursor."""

    code_name = "FAILED_PRECONDITION"
    reason = "CURSOR_EXPIRED"


class ReplicaStopping(DomainError):
    """The replica serving a WatchSessionEvents stream is stopping; resume from the last
    cursor read (on any replica)."""

    code_name = "UNAVAILABLE"
    reason = "REPLICA_STOPPING"
