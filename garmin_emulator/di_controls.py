"""The test controls and read-backs of Garmin's DI sign-in, mixed into GarminEmulator: issue
a token pair directly, kill refresh tokens, block logins, and count what Garmin saw."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from garmin_emulator.di_oauth import DiOAuth
from garmin_emulator.endpoints import DI_TOKEN_PATH, LOGIN_PATH
from garmin_emulator.faults import Faults
from garmin_emulator.options import (
    DEFAULT_DI_DOMAIN,
    DI_DOMAINS,
    IOS_SERVICE_URL,
    KNOWN_DI_CLIENT_IDS,
    DiOptions,
)
from garmin_emulator.sso import CAPTCHA_REQUIRED_BODY, CLOUDFLARE_BLOCK_PAGE, Sso
from garmin_emulator.state import LIVE, EmulatorState, TokenRequest

# block_logins kinds: how Garmin's edge refuses a sign-in it dislikes.
BLOCK_RATE_LIMITED = "rate_limited"
BLOCK_CLOUDFLARE = "cloudflare"
BLOCK_CAPTCHA = "captcha"


class DiControls:
    """GarminEmulator's DI methods; thread-safe like the rest."""

    _di: DiOptions
    _state: EmulatorState
    _faults: Faults
    _di_oauth: DiOAuth
    _sso: Sso

    def issue_ticket(self, email: str, *, service_url: str = IOS_SERVICE_URL) -> str:
        """A service ticket for the user, as Garmin's sign-in page hands one out once the
        user signed in there in a browser (the demo's stand-in for that browser)."""
        with self._state.lock:
            user = self._state.users[email.lower()]
            return self._sso.new_ticket(user, via_mfa=False, service_url=service_url)

    def issue_di_tokens(
        self,
        email: str,
        *,
        client_id: str = KNOWN_DI_CLIENT_IDS[0],
        service_url: str = IOS_SERVICE_URL,
        domain: str = DEFAULT_DI_DOMAIN,
    ) -> dict[str, Any]:
        """A fresh DI token pair for the user, as a ticket exchange at diauth.<domain> answers
        it (not counted): it refreshes only there, and its JWT names it as ``iss``."""
        if domain not in DI_DOMAINS:
            raise ValueError(f"domain must be one of {DI_DOMAINS}, not {domain!r}")
        with self._state.lock:
            expires_at = time.time() + self._di.refresh_token_expires_in
            return self._di_oauth.issue(
                email.lower(), client_id, service_url, expires_at, family=None, domain=domain
            )

    def garminconnect_tokens(
        self,
        email: str,
        *,
        client_id: str = KNOWN_DI_CLIENT_IDS[0],
        domain: str = DEFAULT_DI_DOMAIN,
    ) -> dict[str, str]:
        """A fresh pair from diauth.<domain> in python-garminconnect's ``garmin_tokens.json``
        shape (which names no domain: its reader takes it from the JWT's ``iss``)."""
        answer = self.issue_di_tokens(email, client_id=client_id, domain=domain)
        return {
            "di_token": answer["access_token"],
            "di_refresh_token": answer["refresh_token"],
            "di_client_id": client_id,
        }

    def live_refresh_tokens(self, email: str) -> list[str]:
        """The user's DI refresh tokens Garmin would still accept now."""
        key, now = email.lower(), time.time()
        with self._state.lock:
            return [
                token
                for token, grant in self._state.di_refresh.items()
                if grant.email == key and grant.status == LIVE and grant.expires_at > now
            ]

    def expire_refresh_tokens(self, email: str, after: float = 0.0) -> None:
        """Make the user's DI refresh tokens die ``after`` seconds from now (if not sooner)."""
        key, deadline = email.lower(), time.time() + after
        with self._state.lock:
            for grant in self._state.di_refresh.values():
                if grant.email == key:
                    grant.expires_at = min(grant.expires_at, deadline)

    def block_logins(
        self, kind: str, count: int = 1, *, retry_after: str | int | None = None
    ) -> None:
        """Refuse the next ``count`` SSO logins as Garmin's edge does when it blocks one.

        ``kind`` is BLOCK_RATE_LIMITED (429, with ``retry_after`` as Retry-After when given),
        BLOCK_CLOUDFLARE (a 403 HTML page) or BLOCK_CAPTCHA (200 CAPTCHA_REQUIRED).
        """
        if kind == BLOCK_RATE_LIMITED:
            self._faults.add(LOGIN_PATH, 429, count, retry_after, None, content_type=None, delay=0)
        elif kind == BLOCK_CLOUDFLARE:
            self._faults.add(
                LOGIN_PATH,
                403,
                count,
                retry_after,
                CLOUDFLARE_BLOCK_PAGE.encode(),
                content_type=None,
                delay=0,
            )
        elif kind == BLOCK_CAPTCHA:
            self._faults.add(
                LOGIN_PATH,
                200,
                count,
                retry_after,
                CAPTCHA_REQUIRED_BODY.encode(),
                content_type=None,
                delay=0,
            )
        else:
            raise ValueError(f"unknown block kind {kind!r}")

    # --- records -------------------------------------------------------------------------

    def ticket_exchange_count(self, email: str) -> int:
        """How many service tickets the DI token endpoint exchanged for the user."""
        with self._state.lock:
            return self._state.records.ticket_exchanges.get(email.lower(), 0)

    def di_refresh_count(self, email: str) -> int:
        """How many DI refreshes rotated one of the user's refresh tokens."""
        with self._state.lock:
            return self._state.records.di_refreshes.get(email.lower(), 0)

    def refresh_token_reuses(self, email: str) -> int:
        """How often one of the user's rotated-out refresh tokens was presented again."""
        with self._state.lock:
            return self._state.records.refresh_token_reuses.get(email.lower(), 0)

    @property
    def token_requests(self) -> list[TokenRequest]:
        """Every request to the DI token endpoint, oldest first."""
        with self._state.lock:
            return list(self._state.records.token_requests)

    def di_records(self) -> dict[str, Any]:
        """Everything above at once, JSON-ready (what ``GET /__emulator/di-records`` answers):
        per lower-cased email the tickets exchanged, the rotations and the reuses of dead
        refresh tokens; the token endpoint's answers by outcome; the peak in flight by path."""
        with self._state.lock:
            records = self._state.records
            return {
                "ticket_exchanges": dict(records.ticket_exchanges),
                "di_refreshes": dict(records.di_refreshes),
                "refresh_token_reuses": dict(records.refresh_token_reuses),
                "token_outcomes": dict(Counter(r.outcome for r in records.token_requests)),
                "peak_in_flight": dict(records.in_flight_peaks),
            }

    def peak_in_flight(self, path: str = DI_TOKEN_PATH) -> int:
        """The most requests to ``path`` (default the DI token endpoint) in flight at once."""
        with self._state.lock:
            return self._state.records.in_flight_peaks.get(path, 0)
