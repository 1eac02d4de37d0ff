"""GarminEmulator: what a test holds. It starts and stops the server and drives the
emulated Garmin through thread-safe methods (accounts, activities, token state, faults) and
reads back what Garmin saw; the DI sign-in's own controls come from `di_controls`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from garmin_emulator.activities import new_activity
from garmin_emulator.connect_api import ConnectApi
from garmin_emulator.control import ControlApi
from garmin_emulator.di_controls import DiControls
from garmin_emulator.di_oauth import DiOAuth
from garmin_emulator.faults import Faults
from garmin_emulator.oauth import OAuth
from garmin_emulator.options import DiOptions
from garmin_emulator.routes import Router
from garmin_emulator.server import HttpServer
from garmin_emulator.sso import Sso
from garmin_emulator.state import (
    LIVE,
    REVOKED,
    ApiCall,
    EmulatedUser,
    EmulatorState,
    Records,
    SecretListener,
)

DEFAULT_CONSUMER_KEY = "emulator-consumer-key"
DEFAULT_CONSUMER_SECRET = "emulator-consumer-secret"  # noqa: S105 (a demo value)


class GarminEmulator(DiControls):
    """Garmin's SSO, OAuth (garth's and DI's) and Connect API endpoints, in a background thread.

    Thread-safe: the control methods and the request handlers share one lock. `on_secret`,
    when given, is called with every password, MFA code, cookie, ticket and token the
    emulator knows or issues (from whichever thread issues it), so a test suite can prove
    none of them reaches a log line. `di` says how it plays the DI points Garmin's sources
    leave uncertain.
    """

    def __init__(  # noqa: PLR0913 (keyword-only settings of a test double, each defaulted)
        self,
        *,
        consumer_key: str = DEFAULT_CONSUMER_KEY,
        consumer_secret: str = DEFAULT_CONSUMER_SECRET,
        access_token_expires_in: int = 3600,
        refresh_token_expires_in: int = 7200,
        host: str = "127.0.0.1",
        port: int = 0,
        on_secret: SecretListener | None = None,
        di: DiOptions | None = None,
    ) -> None:
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.access_token_expires_in = access_token_expires_in
        self.refresh_token_expires_in = refresh_token_expires_in
        self._host = host
        self._port = port
        self._state = EmulatorState(on_secret)
        self._state.remember(consumer_secret)
        self._faults = Faults()
        self._oauth = oauth = OAuth(
            self._state,
            consumer_key=consumer_key,
            consumer_secret=consumer_secret,
            access_token_expires_in=access_token_expires_in,
            refresh_token_expires_in=refresh_token_expires_in,
        )
        self._di = di or DiOptions()
        # Signs the DI access tokens (JWTs); never leaves the emulator.
        key = secrets.token_bytes(32)
        self._di_oauth = DiOAuth(self._state, self._di, key)
        self._sso = Sso(self._state, self._di)
        self._router = Router(
            self._state,
            self._faults,
            sso=self._sso,
            oauth=oauth,
            di_oauth=self._di_oauth,
            api=ConnectApi(self._state, self._di, key),
        )
        self._http: HttpServer | None = None

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; valid once started."""
        if self._http is None:
            raise RuntimeError("the emulator is not started")
        return self._http.url

    def start(self) -> GarminEmulator:
        if self._http is None:
            self._http = HttpServer(self._router, ControlApi(self).answer, self._host, self._port)
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    def __enter__(self) -> GarminEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def di(self) -> DiOptions:
        """How the DI sign-in is played; change its fields (not the object) while it runs."""
        return self._di

    @property
    def latency_seconds(self) -> float:
        """Added to every answer (seconds); tests raise it to provoke timeouts everywhere."""
        return self._router.latency_seconds

    @latency_seconds.setter
    def latency_seconds(self, seconds: float) -> None:
        self._router.latency_seconds = seconds

    @property
    def oauth_clock_skew_seconds(self) -> float:
        """How far Garmin's clock is ahead of the signer's (negative: behind) as the OAuth1
        timestamps of garth's token endpoints see it: set it beyond the tolerance
        (garmin_emulator.oauth.TIMESTAMP_TOLERANCE_SECONDS) to play a replica whose clock is
        off, every signed request then refused (401)."""
        return self._oauth.clock_skew_seconds

    @oauth_clock_skew_seconds.setter
    def oauth_clock_skew_seconds(self, seconds: float) -> None:
        self._oauth.clock_skew_seconds = seconds

    # --- accounts and data ---------------------------------------------------------------

    def add_user(
        self,
        email: str,
        password: str,
        *,
        mfa: bool = False,
        mfa_code: str | None = None,
        display_name: str | None = None,
        utc_offset: timedelta = timedelta(hours=1),
    ) -> EmulatedUser:
        """Create (or replace) an account; with mfa, logins need ``mfa_code`` (random if None)."""
        state = self._state
        with state.lock:
            user = EmulatedUser(
                email=email,
                password=password,
                mfa=mfa,
                mfa_code=mfa_code or f"{secrets.randbelow(1_000_000):06d}",
                profile_id=80_000_000 + next(state.ids),
                display_name=display_name or email.split("@", 1)[0],
                utc_offset=utc_offset,
            )
            state.users[email.lower()] = user
            state.remember(password, user.mfa_code)
            state.activities.setdefault(email.lower(), [])
            return user

    def known_emails(self) -> set[str]:
        """The lower-cased emails of every account."""
        with self._state.lock:
            return set(self._state.users)

    def user(self, email: str) -> EmulatedUser:
        with self._state.lock:
            return self._state.users[email.lower()]

    def add_activities(
        self,
        email: str,
        activities: int | Iterable[Mapping[str, Any]],
        *,
        first_start: datetime | None = None,
        every: timedelta = timedelta(days=1),
    ) -> list[dict[str, Any]]:
        """Add activities to the user's account and return them (oldest first).

        An int creates that many, the oldest starting at ``first_start`` (UTC; default: so
        that the newest starts an hour ago) and each next one ``every`` later. A list of
        mappings creates one activity each: its keys override the generated fields (a
        ``startTimeGMT`` may be a datetime or Garmin's "YYYY-MM-DD HH:MM:SS").
        """
        overrides = (
            [{} for _ in range(activities)]
            if isinstance(activities, int)
            else [dict(item) for item in activities]
        )
        if first_start is None:
            first_start = (
                datetime.now(UTC) - timedelta(hours=1) - every * max(len(overrides) - 1, 0)
            )
        state = self._state
        with state.lock:
            user = state.users[email.lower()]
            created = [
                new_activity(state, user, first_start + every * index, index, override)
                for index, override in enumerate(overrides)
            ]
            state.activities[user.email.lower()].extend(created)
            return [dict(activity) for activity in created]

    def delete_activity(self, email: str, activity_id: int) -> None:
        """The user deleted the activity in Garmin Connect: it leaves the list (and every
        later one moves up a place in it)."""
        with self._state.lock:
            listed = self._state.activities[email.lower()]
            listed[:] = [a for a in listed if a["activityId"] != activity_id]

    def remove_activity_file(self, activity_id: int) -> None:
        """The activity has no original file, as one entered by hand: it is still listed,
        and its download answers 404."""
        with self._state.lock:
            self._state.files.pop(activity_id)

    def activity_file(self, activity_id: int) -> bytes:
        """The bytes the download endpoint answers for the activity."""
        with self._state.lock:
            return self._state.files[activity_id][1]

    # --- token state ---------------------------------------------------------------------

    def revoke_tokens(self, email: str) -> None:
        """Revoke every token of the user (a revoked account): garth's exchange and the API
        say 401, a DI refresh says invalid_grant."""
        key = email.lower()
        with self._state.lock:
            for grant in self._state.oauth1.values():
                if grant.email == key:
                    grant.revoked = True
            for access in self._state.access.values():
                if access.email == key:
                    access.revoked = True
            for refresh in self._state.di_refresh.values():
                if refresh.email == key and refresh.status == LIVE:
                    refresh.status = REVOKED

    def expire_access_tokens(self, email: str) -> None:
        """Make every access token of the user (garth's and DI's) expired on Garmin's side (the
        API says 401)."""
        key = email.lower()
        with self._state.lock:
            for access in self._state.access.values():
                if access.email == key:
                    access.expires_at = min(access.expires_at, time.time() - 1)

    # --- faults --------------------------------------------------------------------------

    def fail_next(  # noqa: PLR0913 - one keyword per way an answer can fail
        self,
        path_prefix: str,
        status: int | str | None,
        count: int = 1,
        retry_after: str | int | None = None,
        body: str | bytes | None = None,
        *,
        content_type: str | None = None,
        delay: float = 0.0,
        gzip: bool = False,
    ) -> None:
        """Make the next ``count`` requests whose path starts with ``path_prefix`` fail.

        ``status`` is an HTTP status to answer (with ``body``, default a JSON error, and a
        ``Retry-After`` header when ``retry_after`` is given), ``"reset"`` to reset the
        connection, ``"hang"`` to answer nothing for ``delay`` seconds (default 30) then
        close, or None to answer normally after ``delay`` seconds. A body starting with "<"
        is served as text/html unless ``content_type`` says otherwise; ``gzip`` sends it
        compressed (Content-Encoding: gzip).
        """
        self._faults.add(
            path_prefix,
            status,
            count,
            retry_after,
            body,
            content_type=content_type,
            delay=delay,
            gzip=gzip,
        )

    def clear_faults(self) -> None:
        self._faults.clear()

    # --- records -------------------------------------------------------------------------

    def request_count(self, path_prefix: str = "/") -> int:
        """How many requests arrived whose path starts with ``path_prefix``."""
        counts = self._router.request_counts()
        return sum(n for path, n in counts.items() if path.startswith(path_prefix))

    def request_counts(self) -> dict[str, int]:
        """Requests per path (query excluded)."""
        return self._router.request_counts()

    def exchange_count(self, email: str) -> int:
        """How many OAuth2 tokens the exchange endpoint issued for the user."""
        with self._state.lock:
            return self._state.records.exchange_counts.get(email.lower(), 0)

    @property
    def api_calls(self) -> list[ApiCall]:
        """Every Bearer API request, oldest first."""
        with self._state.lock:
            return list(self._state.records.api_calls)

    @property
    def consumer_keys_seen(self) -> list[str]:
        """The oauth_consumer_key of every OAuth1-signed request, valid or not."""
        with self._state.lock:
            return list(self._state.records.consumer_keys_seen)

    @property
    def signature_failures(self) -> int:
        """How many OAuth1 requests were refused for their consumer key or signature."""
        with self._state.lock:
            return self._state.records.signature_failures

    def reset_records(self) -> None:
        with self._state.lock:
            self._state.records = Records()
