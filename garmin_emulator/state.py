"""What the emulator remembers: accounts, their activities, SSO sessions, tickets and grants,
and the records tests read back. One lock guards all of it; every secret it hands out is
reported to the owner's listener."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

# Called with each password, MFA code, cookie, ticket and token the emulator knows or issues.
SecretListener = Callable[[str], None]


@dataclass
class EmulatedUser:
    """A Garmin account known to the emulator (the handle add_user returns)."""

    email: str
    password: str
    mfa: bool
    mfa_code: str
    profile_id: int
    display_name: str
    utc_offset: timedelta = timedelta(hours=1)
    mfa_method: str = "email"


@dataclass(frozen=True)
class ApiCall:
    """One request to the Bearer API, as the emulator saw it."""

    method: str
    path: str
    query: str
    authorization: str | None
    # Whose access token the Authorization header carried; None for a missing/unknown token.
    token_owner: str | None
    status: int


@dataclass
class SsoSession:
    session_id: str
    pending_mfa_email: str | None = None


@dataclass
class Ticket:
    email: str
    via_mfa: bool
    expires_at: float
    used: bool = False


@dataclass
class OAuth1Grant:
    token: str
    secret: str
    email: str
    mfa_token: str | None
    revoked: bool = False


@dataclass
class AccessGrant:
    email: str
    expires_at: float
    revoked: bool = False


@dataclass
class Records:
    """What tests read back: requests seen, tokens issued, signatures checked."""

    request_counts: dict[str, int] = field(default_factory=dict)
    exchange_counts: dict[str, int] = field(default_factory=dict)
    api_calls: list[ApiCall] = field(default_factory=list)
    consumer_keys_seen: list[str] = field(default_factory=list)
    signature_failures: int = 0


class EmulatorState:
    """Everything the endpoints share. Hold `lock` while reading or changing any of it."""

    def __init__(self, on_secret: SecretListener | None = None) -> None:
        self.lock = threading.RLock()
        self.ids = itertools.count(1)
        self.activity_ids = itertools.count(17_000_000_001)
        # Keyed by lower-cased email.
        self.users: dict[str, EmulatedUser] = {}
        self.activities: dict[str, list[dict[str, Any]]] = {}
        # Activity id -> (owner's lower-cased email, the file's bytes).
        self.files: dict[int, tuple[str, bytes]] = {}
        self.sso_sessions: dict[str, SsoSession] = {}
        self.tickets: dict[str, Ticket] = {}
        self.oauth1: dict[str, OAuth1Grant] = {}
        self.access: dict[str, AccessGrant] = {}
        self.records = Records()
        self._on_secret = on_secret

    def remember(self, *values: str | None) -> None:
        """Report secrets to the listener, so tests can prove none reaches a log line."""
        if self._on_secret is None:
            return
        for value in values:
            if value:
                self._on_secret(value)
