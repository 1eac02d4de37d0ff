"""What the emulator remembers: accounts, their activities, SSO sessions, tickets, garth's and
DI's grants, and the records tests read back. One lock guards all of it; every secret it hands
out is reported to the owner's listener."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
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
    # "di" or "garth" for a token the emulator issued, else None.
    token_kind: str | None = None
    # The Garmin app headers the request carried (wire.APP_HEADERS), names as sent.
    app_headers: Mapping[str, str] = field(default_factory=dict)
    # The cookies the request carried.
    cookies: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenRequest:
    """One request to the DI token endpoint, as the emulator saw it (no secrets)."""

    # The host the client meant (diauth.garmin.com, diauth.garmin.cn), from X-Forwarded-Host.
    host: str
    grant_type: str
    client_id: str
    # Whose ticket or refresh token it carried; None when the host did not know it (another
    # diauth's refresh token included).
    email: str | None
    status: int
    # "issued", "invalid_grant", "invalid_ticket", "invalid_client" or "invalid_request".
    outcome: str
    app_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class SsoSession:
    session_id: str
    pending_mfa_email: str | None = None
    # When the pending MFA login stops being usable (epoch seconds).
    pending_expires_at: float = 0.0
    # The ticket-granting cookie of a session the mobile login started (None: the sign-in
    # page started it); the MFA step must present it.
    castgc: str | None = None


@dataclass
class Ticket:
    email: str
    via_mfa: bool
    expires_at: float
    # The service URL the ticket was issued for; a DI exchange must name the same.
    service_url: str = ""
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
    # Set for DI access tokens (None: garth's OAuth2), with the service URL of their sign-in.
    client_id: str | None = None
    service_url: str = ""


# DiRefreshToken.status values.
LIVE = "live"
ROTATED = "rotated"
REVOKED = "revoked"


@dataclass
class DiRefreshToken:
    """One DI refresh token; every rotation of one sign-in shares its `family`."""

    email: str
    client_id: str
    family: int
    service_url: str
    expires_at: float
    # The Garmin domain whose diauth issued it (garmin.com, garmin.cn): the only one that
    # refreshes it.
    domain: str
    # LIVE until refreshed once (ROTATED) or revoked (REVOKED).
    status: str = LIVE


@dataclass
class Records:
    """What tests read back: requests seen, tokens issued, signatures checked."""

    request_counts: dict[str, int] = field(default_factory=dict)
    exchange_counts: dict[str, int] = field(default_factory=dict)
    api_calls: list[ApiCall] = field(default_factory=list)
    consumer_keys_seen: list[str] = field(default_factory=list)
    signature_failures: int = 0
    # Per lower-cased email: DI tickets exchanged, refreshes that rotated, and presentations
    # of a refresh token that had already been rotated out.
    ticket_exchanges: dict[str, int] = field(default_factory=dict)
    di_refreshes: dict[str, int] = field(default_factory=dict)
    refresh_token_reuses: dict[str, int] = field(default_factory=dict)
    token_requests: list[TokenRequest] = field(default_factory=list)
    # Per path: the most requests in flight at once.
    in_flight_peaks: dict[str, int] = field(default_factory=dict)


def bump(counts: dict[str, int], key: str) -> None:
    """Add one to a per-key count."""
    counts[key] = counts.get(key, 0) + 1


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
        self.di_refresh: dict[str, DiRefreshToken] = {}
        # Family -> its newest refresh token.
        self.di_families: dict[int, str] = {}
        self.records = Records()
        self._on_secret = on_secret

    def remember(self, *values: str | None) -> None:
        """Report secrets to the listener, so tests can prove none reaches a log line."""
        if self._on_secret is None:
            return
        for value in values:
            if value:
                self._on_secret(value)
