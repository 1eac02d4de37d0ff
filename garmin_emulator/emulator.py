"""An emulator of the Garmin endpoints garth 0.8.0 calls, for tests and the README demo.

It serves, on one plain-HTTP port, what garth believes are several https hosts:

* the mobile JSON SSO (sso.garmin.com): ``GET /mobile/sso/en/sign-in`` (sets the SSO cookie),
  ``POST /mobile/api/login``, ``POST /mobile/api/mfa/verifyCode``, ``GET /portal/sso/embed``;
* the OAuth1-signed token endpoints (connectapi.garmin.com):
  ``GET /oauth-service/oauth/preauthorized`` and ``POST /oauth-service/oauth/exchange/user/2.0``,
  whose HMAC-SHA1 signatures are verified against the original https URL (rebuilt from the
  ``X-Forwarded-Host`` header the adapter's transport adds);
* the Bearer API the sync needs: ``/userprofile-service/socialProfile``,
  ``/activitylist-service/activities/search/activities`` and
  ``/download-service/files/activity/{id}``.

Tests drive it through thread-safe Python methods (``add_user``, ``revoke_tokens``,
``fail_next``...). ``python -m garmin_emulator --port N`` runs it for demos and
benchmarks (``--latency``, ``--users-from-file``); a process that runs it reads its request
counters at ``GET /__emulator/request-counts`` (no latency, not counted, not Garmin's).
Every answer, including to malformed requests, is JSON unless Garmin would answer otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature as oauth_signature
from oauthlib.oauth1.rfc5849 import utils as oauth_utils

log = logging.getLogger(__name__)

DEFAULT_CONSUMER_KEY = "emulator-consumer-key"
DEFAULT_CONSUMER_SECRET = "emulator-consumer-secret"  # noqa: S105 (a demo value)

SSO_COOKIE = "GARMIN-SSO-CUST-GUID"
SIGN_IN_PATH = "/mobile/sso/en/sign-in"
LOGIN_PATH = "/mobile/api/login"
VERIFY_MFA_PATH = "/mobile/api/mfa/verifyCode"
EMBED_PATH = "/portal/sso/embed"
PREAUTHORIZED_PATH = "/oauth-service/oauth/preauthorized"
EXCHANGE_PATH = "/oauth-service/oauth/exchange/user/2.0"
PROFILE_PATH = "/userprofile-service/socialProfile"
ACTIVITIES_PATH = "/activitylist-service/activities/search/activities"
DOWNLOAD_PREFIX = "/download-service/files/activity/"
# The emulator's own control endpoint (for a process that runs it): request counts by path.
REQUEST_COUNTS_PATH = "/__emulator/request-counts"

# Requests larger than this are refused: the emulator only ever needs small JSON/form bodies.
MAX_BODY_BYTES = 1024 * 1024
TICKET_TTL_SECONDS = 300.0
GARMIN_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

FAULT_RESET = "reset"
FAULT_HANG = "hang"


# --- Values tests see ------------------------------------------------------------------


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
class _Fault:
    path_prefix: str
    status: int | str | None
    remaining: int
    retry_after: str | None
    body: bytes | None
    content_type: str | None
    delay: float


@dataclass
class _SsoSession:
    session_id: str
    pending_mfa_email: str | None = None


@dataclass
class _Ticket:
    email: str
    via_mfa: bool
    expires_at: float
    used: bool = False


@dataclass
class _OAuth1Grant:
    token: str
    secret: str
    email: str
    mfa_token: str | None
    revoked: bool = False


@dataclass
class _AccessGrant:
    email: str
    expires_at: float
    revoked: bool = False


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


class _BadRequest(Exception):
    """The request is malformed: answered 400 with this message."""


def _json_reply(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), headers=list(headers or []))


def _error_reply(status: int, message: str) -> _Reply:
    return _json_reply(status, {"message": message, "error": HTTPStatus(status).phrase})


def _sso_status(kind: str, http_status: str = "OK") -> dict[str, str]:
    return {"type": kind, "message": "", "httpStatus": http_status}


def _html_reply(title: str) -> _Reply:
    page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body></body></html>"
    return _Reply(200, page.encode(), content_type="text/html;charset=UTF-8")


def _garmin_time(moment: datetime) -> str:
    return moment.strftime(GARMIN_TIME_FORMAT)


def _fake_fit_zip(activity_id: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{activity_id}_ACTIVITY.fit", b".FIT" + str(activity_id).encode())
    return buffer.getvalue()


_ACTIVITY_KINDS = (
    ("running", 1, "Run", 3.0),
    ("cycling", 2, "Ride", 7.0),
    ("lap_swimming", 27, "Pool Swim", 1.1),
    ("walking", 9, "Walk", 1.4),
)


# --- The emulator ----------------------------------------------------------------------


# Across every emulator of the process: a test suite checks its logs against all of them.
_EVERY_SECRET: set[str] = set()
_EVERY_SECRET_LOCK = threading.Lock()


def every_secret_issued() -> set[str]:
    """Every secret any emulator of this process knew or issued (for log-leak checks)."""
    with _EVERY_SECRET_LOCK:
        return set(_EVERY_SECRET)


class GarminEmulator:
    """Garmin's SSO, OAuth and Connect API endpoints, in a background thread.

    Thread-safe: the control methods and the request handlers share one lock.
    """

    def __init__(
        self,
        *,
        consumer_key: str = DEFAULT_CONSUMER_KEY,
        consumer_secret: str = DEFAULT_CONSUMER_SECRET,
        access_token_expires_in: int = 3600,
        refresh_token_expires_in: int = 7200,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.access_token_expires_in = access_token_expires_in
        self.refresh_token_expires_in = refresh_token_expires_in
        # Added to every answer (seconds); tests raise it to provoke timeouts everywhere.
        self.latency_seconds = 0.0
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._activity_ids = itertools.count(17_000_000_001)
        self._users: dict[str, EmulatedUser] = {}
        self._activities: dict[str, list[dict[str, Any]]] = {}
        self._files: dict[int, tuple[str, bytes]] = {}
        self._sso_sessions: dict[str, _SsoSession] = {}
        self._tickets: dict[str, _Ticket] = {}
        self._oauth1: dict[str, _OAuth1Grant] = {}
        self._access: dict[str, _AccessGrant] = {}
        self._faults: list[_Fault] = []
        self._request_counts: dict[str, int] = {}
        self._exchange_counts: dict[str, int] = {}
        self._api_calls: list[ApiCall] = []
        self._consumer_keys_seen: list[str] = []
        self._signature_failures = 0
        # Every secret handed out, so tests can prove none of them reaches a log line.
        self._issued: set[str] = set()

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; valid once started."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> GarminEmulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = ThreadingHTTPServer((self._host, self._port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="garmin-emulator",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        # Wakes handlers sleeping on latency, delays or hangs so they end promptly.
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> GarminEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- control API: accounts and data --------------------------------------------------

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
        with self._lock:
            user = EmulatedUser(
                email=email,
                password=password,
                mfa=mfa,
                mfa_code=mfa_code or f"{secrets.randbelow(1_000_000):06d}",
                profile_id=80_000_000 + next(self._ids),
                display_name=display_name or email.split("@", 1)[0],
                utc_offset=utc_offset,
            )
            self._users[email.lower()] = user
            self._remember(password, user.mfa_code)
            self._activities.setdefault(email.lower(), [])
            return user

    def user(self, email: str) -> EmulatedUser:
        with self._lock:
            return self._users[email.lower()]

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
        with self._lock:
            user = self._users[email.lower()]
            created = [
                self._new_activity(user, first_start + every * index, index, override)
                for index, override in enumerate(overrides)
            ]
            self._activities[user.email.lower()].extend(created)
            return [dict(activity) for activity in created]

    def _new_activity(
        self, user: EmulatedUser, start: datetime, index: int, override: dict[str, Any]
    ) -> dict[str, Any]:
        start_gmt = override.pop("startTimeGMT", start)
        if isinstance(start_gmt, str):
            start_gmt = datetime.strptime(start_gmt, GARMIN_TIME_FORMAT).replace(tzinfo=UTC)
        start_gmt = start_gmt.astimezone(UTC).replace(microsecond=0)
        type_key, type_id, label, speed = _ACTIVITY_KINDS[index % len(_ACTIVITY_KINDS)]
        duration = 1800.0 + 60.0 * (index % 30)
        activity_id = int(override.pop("activityId", next(self._activity_ids)))
        activity: dict[str, Any] = {
            "activityId": activity_id,
            "activityName": f"{label} {index + 1}",
            "description": None,
            "startTimeLocal": _garmin_time(start_gmt + user.utc_offset),
            "startTimeGMT": _garmin_time(start_gmt),
            "activityType": {"typeId": type_id, "typeKey": type_key, "parentTypeId": 17},
            "eventType": {"typeId": 9, "typeKey": "uncategorized", "sortOrder": 10},
            "distance": round(duration * speed, 1),
            "duration": duration,
            "elapsedDuration": duration + 30.0,
            "movingDuration": duration - 20.0,
            "averageSpeed": speed,
            "averageHR": 140.0,
            "maxHR": 171.0,
            "calories": round(duration / 4, 1),
            "ownerId": user.profile_id,
            "ownerDisplayName": user.display_name,
            "beginTimestamp": int(start_gmt.timestamp() * 1000),
            "hasPolyline": type_key != "lap_swimming",
            "manufacturer": "GARMIN",
        }
        activity.update(override)
        self._files[activity_id] = (user.email.lower(), _fake_fit_zip(activity_id))
        return activity

    def activity_file(self, activity_id: int) -> bytes:
        """The bytes the download endpoint answers for the activity."""
        with self._lock:
            return self._files[activity_id][1]

    # --- control API: token state --------------------------------------------------------

    def revoke_tokens(self, email: str) -> None:
        """Revoke every OAuth1 and OAuth2 token of the user: the exchange and the API say 401."""
        key = email.lower()
        with self._lock:
            for grant in self._oauth1.values():
                if grant.email == key:
                    grant.revoked = True
            for access in self._access.values():
                if access.email == key:
                    access.revoked = True

    def expire_access_tokens(self, email: str) -> None:
        """Make every access token of the user expired on Garmin's side (the API says 401)."""
        key = email.lower()
        with self._lock:
            for access in self._access.values():
                if access.email == key:
                    access.expires_at = min(access.expires_at, time.time() - 1)

    # --- control API: faults -------------------------------------------------------------

    def fail_next(
        self,
        path_prefix: str,
        status: int | str | None,
        count: int = 1,
        retry_after: str | int | None = None,
        body: str | bytes | None = None,
        *,
        content_type: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Make the next ``count`` requests whose path starts with ``path_prefix`` fail.

        ``status`` is an HTTP status to answer (with ``body``, default a JSON error, and a
        ``Retry-After`` header when ``retry_after`` is given), ``"reset"`` to reset the
        connection, ``"hang"`` to answer nothing for ``delay`` seconds (default 30) then
        close, or None to answer normally after ``delay`` seconds. A body starting with "<"
        is served as text/html unless ``content_type`` says otherwise.
        """
        if isinstance(status, str) and status not in {FAULT_RESET, FAULT_HANG}:
            raise ValueError(f"unknown fault {status!r}")
        if status == FAULT_HANG and delay <= 0:
            delay = 30.0
        raw = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._faults.append(
                _Fault(
                    path_prefix=path_prefix,
                    status=status,
                    remaining=count,
                    retry_after=None if retry_after is None else str(retry_after),
                    body=raw,
                    content_type=content_type,
                    delay=delay,
                )
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and path.startswith(fault.path_prefix):
                    fault.remaining -= 1
                    return fault
            return None

    # --- control API: records ------------------------------------------------------------

    def request_count(self, path_prefix: str = "/") -> int:
        """How many requests arrived whose path starts with ``path_prefix``."""
        with self._lock:
            return sum(
                n for path, n in self._request_counts.items() if path.startswith(path_prefix)
            )

    def request_counts(self) -> dict[str, int]:
        """Requests per path (query excluded)."""
        with self._lock:
            return dict(self._request_counts)

    def exchange_count(self, email: str) -> int:
        """How many OAuth2 tokens the exchange endpoint issued for the user."""
        with self._lock:
            return self._exchange_counts.get(email.lower(), 0)

    @property
    def api_calls(self) -> list[ApiCall]:
        """Every Bearer API request, oldest first."""
        with self._lock:
            return list(self._api_calls)

    @property
    def consumer_keys_seen(self) -> list[str]:
        """The oauth_consumer_key of every OAuth1-signed request, valid or not."""
        with self._lock:
            return list(self._consumer_keys_seen)

    @property
    def signature_failures(self) -> int:
        """How many OAuth1 requests were refused for their consumer key or signature."""
        with self._lock:
            return self._signature_failures

    def _remember(self, *values: str | None) -> None:
        issued = {value for value in values if value}
        with self._lock:
            self._issued.update(issued)
        with _EVERY_SECRET_LOCK:
            _EVERY_SECRET.update(issued)

    def secrets_issued(self) -> set[str]:
        """Every password, MFA code, cookie, ticket and token this emulator knows or issued."""
        with self._lock:
            known = {self.consumer_secret, *self._issued}
            for user in self._users.values():
                known.update((user.password, user.mfa_code))
            for grant in self._oauth1.values():
                known.update(v for v in (grant.token, grant.secret, grant.mfa_token) if v)
            return known

    def reset_records(self) -> None:
        with self._lock:
            self._request_counts.clear()
            self._exchange_counts.clear()
            self._api_calls.clear()
            self._consumer_keys_seen.clear()
            self._signature_failures = 0

    # --- request handling (called by the handler thread) ---------------------------------

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _count(self, path: str) -> None:
        with self._lock:
            self._request_counts[path] = self._request_counts.get(path, 0) + 1

    def _route(self, request: _Incoming) -> _Reply:
        routes: dict[tuple[str, str], Callable[[_Incoming], _Reply]] = {
            ("GET", SIGN_IN_PATH): self._sign_in,
            ("POST", LOGIN_PATH): self._login,
            ("POST", VERIFY_MFA_PATH): self._verify_mfa,
            ("GET", EMBED_PATH): self._embed,
            ("GET", PREAUTHORIZED_PATH): self._preauthorized,
            ("POST", EXCHANGE_PATH): self._exchange,
            ("GET", PROFILE_PATH): self._profile,
            ("GET", ACTIVITIES_PATH): self._activity_list,
        }
        handler = routes.get((request.method, request.path))
        if handler is not None:
            return handler(request)
        if request.method == "GET" and request.path.startswith(DOWNLOAD_PREFIX):
            return self._download(request)
        if any(path == request.path for _, path in routes) or request.path.startswith(
            DOWNLOAD_PREFIX
        ):
            return _error_reply(405, "method not allowed")
        return _error_reply(404, "no such endpoint")

    # --- SSO -----------------------------------------------------------------------------

    def _sign_in(self, request: _Incoming) -> _Reply:
        session_id = secrets.token_urlsafe(24)
        self._remember(session_id)
        with self._lock:
            self._sso_sessions[session_id] = _SsoSession(session_id)
        reply = _html_reply("GARMIN Authentication Application")
        # Secure like Garmin's, unless the client really speaks plain HTTP to us.
        secure = "; Secure" if request.original_url.startswith("https://") else ""
        reply.headers.append(("Set-Cookie", f"{SSO_COOKIE}={session_id}; Path=/{secure}; HttpOnly"))
        return reply

    def _sso_session(self, request: _Incoming) -> _SsoSession | None:
        session_id = request.cookies.get(SSO_COOKIE)
        with self._lock:
            return self._sso_sessions.get(session_id) if session_id else None

    def _login(self, request: _Incoming) -> _Reply:
        body = request.json_object()
        if not request.query.get("clientId") or not request.query.get("service"):
            raise _BadRequest("clientId and service are required")
        session = self._sso_session(request)
        if session is None:
            # Real Garmin needs the sign-in page's cookies first.
            return _json_reply(403, {"responseStatus": _sso_status("INVALID_SESSION", "FORBIDDEN")})
        email, password = body.get("username"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise _BadRequest("username and password are required")
        with self._lock:
            user = self._users.get(email.lower())
            if user is None or not secrets.compare_digest(
                user.password.encode(), password.encode()
            ):
                status = _sso_status("INVALID_USERNAME_PASSWORD", "UNAUTHORIZED")
                return _json_reply(401, {"responseStatus": status})
            if user.mfa:
                session.pending_mfa_email = user.email.lower()
                return _json_reply(
                    200,
                    {
                        "responseStatus": _sso_status("MFA_REQUIRED"),
                        "customerMfaInfo": {
                            "mfaLastMethodUsed": user.mfa_method,
                            "email": user.email,
                        },
                    },
                )
            ticket = self._new_ticket(user, via_mfa=False)
        return self._ticket_reply(ticket, request)

    def _verify_mfa(self, request: _Incoming) -> _Reply:
        body = request.json_object()
        session = self._sso_session(request)
        with self._lock:
            pending = session.pending_mfa_email if session is not None else None
            if session is None or pending is None:
                # The code is bound to the SSO cookie of the login that asked for it.
                return _json_reply(
                    401, {"responseStatus": _sso_status("INVALID_SESSION", "UNAUTHORIZED")}
                )
            user = self._users[pending]
            if body.get("mfaMethod") != user.mfa_method:
                raise _BadRequest("unexpected mfaMethod")
            code = body.get("mfaVerificationCode")
            if not isinstance(code, str) or not secrets.compare_digest(
                code.encode(), user.mfa_code.encode()
            ):
                return _json_reply(200, {"responseStatus": _sso_status("INVALID_MFA_CODE")})
            session.pending_mfa_email = None
            ticket = self._new_ticket(user, via_mfa=True)
        return self._ticket_reply(ticket, request)

    def _new_ticket(self, user: EmulatedUser, *, via_mfa: bool) -> str:
        ticket = f"ST-{next(self._ids):07d}-{secrets.token_urlsafe(16)}-cas"
        self._remember(ticket)
        self._tickets[ticket] = _Ticket(
            email=user.email.lower(), via_mfa=via_mfa, expires_at=time.time() + TICKET_TTL_SECONDS
        )
        return ticket

    def _ticket_reply(self, ticket: str, request: _Incoming) -> _Reply:
        return _json_reply(
            200,
            {
                "responseStatus": _sso_status("SUCCESSFUL"),
                "serviceTicketId": ticket,
                "serviceURL": request.query.get("service", ""),
            },
        )

    def _embed(self, _request: _Incoming) -> _Reply:
        return _html_reply("GARMIN SSO")

    # --- OAuth ---------------------------------------------------------------------------

    def _preauthorized(self, request: _Incoming) -> _Reply:
        if not self._signature_ok(request, token_secret=None):
            return _error_reply(401, "invalid OAuth1 signature or consumer")
        with self._lock:
            ticket = self._tickets.get(request.query.get("ticket", ""))
            if ticket is None or ticket.used or ticket.expires_at < time.time():
                return _error_reply(401, "invalid or used ticket")
            ticket.used = True
            grant = _OAuth1Grant(
                token=secrets.token_hex(24),
                secret=secrets.token_urlsafe(27),
                email=ticket.email,
                mfa_token=secrets.token_hex(16) if ticket.via_mfa else None,
            )
            self._oauth1[grant.token] = grant
            self._remember(grant.token, grant.secret, grant.mfa_token)
        answer = {"oauth_token": grant.token, "oauth_token_secret": grant.secret}
        if grant.mfa_token is not None:
            expires = datetime.now(UTC) + timedelta(days=365)
            answer["mfa_token"] = grant.mfa_token
            answer["mfa_expiration_timestamp"] = expires.strftime("%Y-%m-%d %H:%M:%S.000")
        return _Reply(200, urlencode(answer).encode(), content_type="text/plain;charset=UTF-8")

    def _exchange(self, request: _Incoming) -> _Reply:
        oauth = request.oauth_params()
        with self._lock:
            grant = self._oauth1.get(oauth.get("oauth_token", ""))
        if grant is None:
            self._note_consumer(oauth)
            return _error_reply(401, "unknown token")
        if not self._signature_ok(request, token_secret=grant.secret):
            return _error_reply(401, "invalid OAuth1 signature or consumer")
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        with self._lock:
            if grant.revoked:
                return _error_reply(401, "revoked token")
            if grant.mfa_token is not None and form.get("mfa_token") != grant.mfa_token:
                return _error_reply(401, "mfa_token required")
            access_token = "eyJ" + secrets.token_urlsafe(48)
            refresh_token = "eyJ" + secrets.token_urlsafe(32)
            self._remember(access_token, refresh_token)
            self._access[access_token] = _AccessGrant(
                email=grant.email, expires_at=time.time() + self.access_token_expires_in
            )
            self._exchange_counts[grant.email] = self._exchange_counts.get(grant.email, 0) + 1
        return _json_reply(
            200,
            {
                "scope": "COMMUNITY_COURSE_READ GARMINPAY_WRITE CONNECT_READ CONNECT_WRITE",
                "jti": secrets.token_hex(16),
                "access_token": access_token,
                "token_type": "Bearer",
                "refresh_token": refresh_token,
                "expires_in": self.access_token_expires_in,
                "refresh_token_expires_in": self.refresh_token_expires_in,
            },
        )

    def _signature_ok(self, request: _Incoming, *, token_secret: str | None) -> bool:
        """RFC 5849 HMAC-SHA1 check over the original https URL garth signed."""
        oauth = request.oauth_params()
        self._note_consumer(oauth)
        ok = (
            oauth.get("oauth_consumer_key") == self.consumer_key
            and oauth.get("oauth_signature_method") == "HMAC-SHA1"
            and "oauth_signature" in oauth
            and (token_secret is None) == ("oauth_token" not in oauth)
            and self._hmac_matches(request, oauth["oauth_signature"], token_secret)
        )
        if not ok:
            with self._lock:
                self._signature_failures += 1
        return ok

    def _note_consumer(self, oauth: Mapping[str, str]) -> None:
        consumer_key = oauth.get("oauth_consumer_key")
        if consumer_key is not None:
            with self._lock:
                self._consumer_keys_seen.append(consumer_key)

    def _hmac_matches(self, request: _Incoming, signature: str, token_secret: str | None) -> bool:
        form_body = "application/x-www-form-urlencoded" in request.headers.get("Content-Type", "")
        body = request.body.decode("utf-8", "replace") if form_body else ""
        try:
            oauth_request = OAuthRequest(
                request.original_url, request.method, body, {"Authorization": request.authorization}
            )
            oauth_request.params = oauth_signature.collect_parameters(
                uri_query=urlsplit(request.original_url).query,
                body=body,
                headers={"Authorization": request.authorization},
            )
            oauth_request.signature = signature
            return bool(
                oauth_signature.verify_hmac_sha1(oauth_request, self.consumer_secret, token_secret)
            )
        except (ValueError, TypeError, KeyError):
            return False

    # --- Bearer API ----------------------------------------------------------------------

    def _bearer_owner(self, request: _Incoming) -> str | None:
        header = request.authorization
        if not header or not header.startswith("Bearer "):
            return None
        with self._lock:
            access = self._access.get(header[len("Bearer ") :])
            if access is None or access.revoked or access.expires_at <= time.time():
                return None
            return access.email

    def _token_owner(self, request: _Incoming) -> str | None:
        """Whose token this is, valid or not (for the API record)."""
        header = request.authorization or ""
        with self._lock:
            access = self._access.get(header.removeprefix("Bearer "))
            return access.email if access is not None else None

    def _api(self, request: _Incoming, answer: Callable[[EmulatedUser], _Reply]) -> _Reply:
        owner = self._bearer_owner(request)
        if owner is None:
            reply = _error_reply(401, "invalid or expired access token")
        else:
            with self._lock:
                user = self._users[owner]
            reply = answer(user)
        with self._lock:
            self._api_calls.append(
                ApiCall(
                    method=request.method,
                    path=request.path,
                    query=request.raw_query,
                    authorization=request.authorization,
                    token_owner=self._token_owner(request),
                    status=reply.status,
                )
            )
        return reply

    def _profile(self, request: _Incoming) -> _Reply:
        def answer(user: EmulatedUser) -> _Reply:
            return _json_reply(
                200,
                {
                    "id": user.profile_id,
                    "profileId": user.profile_id,
                    "garminGUID": f"guid-{user.profile_id}",
                    "displayName": user.display_name,
                    "fullName": user.display_name.title(),
                    "userName": user.email,
                    "profileVisibility": "private",
                    "location": None,
                },
            )

        return self._api(request, answer)

    def _activity_list(self, request: _Incoming) -> _Reply:
        start = request.int_param("start", 0, minimum=0)
        limit = request.int_param("limit", 20, minimum=0)
        first = request.date_param("startDate")
        last = request.date_param("endDate")

        def answer(user: EmulatedUser) -> _Reply:
            with self._lock:
                activities = list(self._activities[user.email.lower()])
            chosen = [a for a in activities if _local_date_within(a, first, last)]
            # Garmin lists newest first.
            chosen.sort(key=lambda a: (a["startTimeGMT"], a["activityId"]), reverse=True)
            return _json_reply(200, chosen[start : start + limit])

        return self._api(request, answer)

    def _download(self, request: _Incoming) -> _Reply:
        raw_id = request.path[len(DOWNLOAD_PREFIX) :]
        if not raw_id.isdigit():
            raise _BadRequest("activity id must be a number")

        def answer(user: EmulatedUser) -> _Reply:
            with self._lock:
                owned = self._files.get(int(raw_id))
            if owned is None or owned[0] != user.email.lower():
                return _error_reply(404, "activity not found")
            headers = [("Content-Disposition", f'attachment; filename="{raw_id}.zip"')]
            return _Reply(
                200, owned[1], content_type="application/x-zip-compressed", headers=headers
            )

        return self._api(request, answer)


def _local_date_within(activity: Mapping[str, Any], first: date | None, last: date | None) -> bool:
    local_day = date.fromisoformat(activity["startTimeLocal"][:10])
    return (first is None or local_day >= first) and (last is None or local_day <= last)


# --- HTTP plumbing ---------------------------------------------------------------------


@dataclass
class _Incoming:
    """One parsed request."""

    method: str
    path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes
    original_url: str
    cookies: dict[str, str]

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.raw_query, keep_blank_values=True))

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    def json_object(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise _BadRequest("the body is not JSON") from None
        if not isinstance(value, dict):
            raise _BadRequest("the body must be a JSON object")
        return value

    def oauth_params(self) -> dict[str, str]:
        header = self.authorization or ""
        if not header.startswith("OAuth "):
            return {}
        try:
            pairs = oauth_utils.parse_authorization_header(header)
            # Header values are percent-encoded (RFC 5849 3.5.1).
            return {name: oauth_utils.unescape(value) for name, value in pairs}
        except (ValueError, TypeError, IndexError):
            return {}

    def int_param(self, name: str, default: int, *, minimum: int) -> int:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        if not re.fullmatch(r"\d{1,9}", raw) or int(raw) < minimum:
            raise _BadRequest(f"{name} must be a non-negative integer")
        return int(raw)

    def date_param(self, name: str) -> date | None:
        raw = self.query.get(name)
        if not raw:
            return None
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise _BadRequest(f"{name} must be YYYY-MM-DD") from None


def _make_handler(emulator: GarminEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.emulator = emulator
    return Handler


class _Handler(BaseHTTPRequestHandler):
    emulator: GarminEmulator
    server_version = "GarminEmulator/1"
    # A stuck client must not pin a thread forever.
    timeout = 30

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: ARG002 - the stdlib signature
        # Request lines carry SSO tickets and OAuth parameters in their query: log the method,
        # the path and the status only (a malformed request may have no path at all).
        path = urlsplit(getattr(self, "path", "") or "").path
        status = args[1] if len(args) > 1 else "-"
        log.debug("emulator: %s %s -> %s", getattr(self, "command", "?"), path, status)

    def send_error(
        self,
        code: int,
        message: str | None = None,
        explain: str | None = None,  # noqa: ARG002 (the stdlib's signature)
    ) -> None:
        """Malformed requests get a JSON error too (the stdlib would send HTML)."""
        if self.request_version == "HTTP/0.9":
            # An unparsable request line leaves the 0.9 default, which means "no status line".
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        self._write(_error_reply(code, message or HTTPStatus(code).phrase))

    def _handle(self) -> None:
        emulator = self.emulator
        try:
            request = self._parse()
        except _BadRequest as exc:
            self._write(_error_reply(400, str(exc)))
            return
        if request.method == "GET" and request.path == REQUEST_COUNTS_PATH:
            # Not a Garmin endpoint: answered at once and left out of the counts.
            self._write(_json_reply(200, emulator.request_counts()))
            return
        emulator._count(request.path)
        emulator._sleep(emulator.latency_seconds)
        fault = emulator._take_fault(request.path)
        if fault is not None and self._apply_fault(fault):
            return
        try:
            reply = emulator._route(request)
        except _BadRequest as exc:
            reply = _error_reply(400, str(exc))
        except Exception:
            log.exception("emulator: handler failed")
            reply = _error_reply(500, "internal error")
        self._write(reply)

    def _parse(self) -> _Incoming:
        split = urlsplit(self.path)
        length_header = self.headers.get("Content-Length") or "0"
        if not length_header.isdigit():
            raise _BadRequest("bad Content-Length")
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BadRequest("body too large")
        body = self.rfile.read(length) if length else b""
        # The adapter's transport keeps the original host here; direct callers use Host.
        forwarded = self.headers.get("X-Forwarded-Host")
        origin = f"https://{forwarded}" if forwarded else f"http://{self.headers.get('Host', '')}"
        return _Incoming(
            method=self.command,
            path=split.path,
            raw_query=split.query,
            headers=dict(self.headers.items()),
            body=body,
            original_url=origin + self.path,
            cookies=self._cookies(),
        )

    def _cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.get_all("Cookie") or []:
            try:
                jar.load(header)
            except CookieError:
                continue
        return {name: morsel.value for name, morsel in jar.items()}

    def _apply_fault(self, fault: _Fault) -> bool:
        """Play the fault; True when it replaced the normal answer."""
        if fault.status == FAULT_RESET:
            self._reset_connection()
            return True
        self.emulator._sleep(fault.delay)
        if fault.status == FAULT_HANG:
            self.close_connection = True
            return True
        if fault.status is None:
            return False
        assert isinstance(fault.status, int)
        body = fault.body
        if body is None:
            body = json.dumps({"message": "injected failure", "status": fault.status}).encode()
        content_type = fault.content_type or (
            "text/html;charset=UTF-8" if body.lstrip().startswith(b"<") else "application/json"
        )
        headers = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
        self._write(_Reply(fault.status, body, content_type=content_type, headers=headers))
        return True

    def _reset_connection(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST: the client sees "connection reset".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _write(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:
            # The client went away (timed out, reset): nothing left to tell it.
            self.close_connection = True


# --- Demo entry point ------------------------------------------------------------------


def _parse_user(spec: str) -> tuple[str, str, str | None]:
    email, sep, rest = spec.partition(":")
    if not sep or not email or not rest:
        raise argparse.ArgumentTypeError("expected EMAIL:PASSWORD[:MFA_CODE]")
    password, _, code = rest.partition(":")
    return email, password, code or None


def _read_users(path: str) -> list[tuple[str, str, str | None]]:
    """EMAIL:PASSWORD[:MFA_CODE] per line; blank lines and lines starting with # are skipped."""
    try:
        specs = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None
    return [_parse_user(spec) for spec in specs if spec and not spec.startswith("#")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m garmin_emulator",
        description="Run the Garmin emulator (SSO, OAuth, Connect API) until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--consumer-key", default=DEFAULT_CONSUMER_KEY)
    parser.add_argument("--consumer-secret", default=DEFAULT_CONSUMER_SECRET)
    parser.add_argument("--access-token-expires-in", type=int, default=3600)
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        type=_parse_user,
        metavar="EMAIL:PASSWORD[:MFA_CODE]",
        help="an account (repeatable); with an MFA code the login needs it",
    )
    parser.add_argument(
        "--users-from-file",
        type=_read_users,
        default=[],
        metavar="PATH",
        help="accounts, one EMAIL:PASSWORD[:MFA_CODE] per line (added to --user)",
    )
    parser.add_argument("--activities", type=int, default=5, help="activities per account")
    parser.add_argument(
        "--latency", type=float, default=0.0, metavar="SECONDS", help="added to every answer"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    emulator = GarminEmulator(
        consumer_key=args.consumer_key,
        consumer_secret=args.consumer_secret,
        access_token_expires_in=args.access_token_expires_in,
        host=args.host,
        port=args.port,
    )
    emulator.latency_seconds = max(0.0, args.latency)
    users = [*args.user, *args.users_from_file] or [("demo@example.com", "demo-password", None)]
    for email, password, code in users:
        emulator.add_user(email, password, mfa=code is not None, mfa_code=code)
        emulator.add_activities(email, args.activities)
    with emulator:
        # The demo's one output: the URL to point GARMIN_AUTH_UPSTREAM_URL at.
        print(emulator.url, flush=True)  # noqa: T201
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
