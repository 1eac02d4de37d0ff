"""Which endpoint answers a request: the method and path table over SSO, garth's OAuth, DI's
token endpoint and the API, with the per-request bookkeeping the HTTP side asks for (counts,
requests in flight, latency, faults)."""

from __future__ import annotations

from collections.abc import Callable

from garmin_emulator.connect_api import ConnectApi
from garmin_emulator.di_oauth import DiOAuth
from garmin_emulator.endpoints import (
    ACTIVITIES_PATH,
    DI_TOKEN_PATH,
    DOWNLOAD_PREFIX,
    EMBED_PATH,
    EXCHANGE_PATH,
    LOGIN_PATH,
    PREAUTHORIZED_PATH,
    PROFILE_PATH,
    SIGN_IN_PATH,
    VERIFY_MFA_PATH,
)
from garmin_emulator.faults import Fault, Faults
from garmin_emulator.oauth import OAuth
from garmin_emulator.sso import Sso
from garmin_emulator.state import EmulatorState, bump
from garmin_emulator.wire import Incoming, Reply, error_reply


class Router:
    """The emulator's site (garmin_emulator.server.Site)."""

    def __init__(
        self,
        state: EmulatorState,
        faults: Faults,
        *,
        sso: Sso,
        oauth: OAuth,
        di_oauth: DiOAuth,
        api: ConnectApi,
    ) -> None:
        self._state = state
        self._faults = faults
        self._routes: dict[tuple[str, str], Callable[[Incoming], Reply]] = {
            ("GET", SIGN_IN_PATH): sso.sign_in,
            ("POST", LOGIN_PATH): sso.login,
            ("POST", VERIFY_MFA_PATH): sso.verify_mfa,
            ("GET", EMBED_PATH): sso.embed,
            ("GET", PREAUTHORIZED_PATH): oauth.preauthorized,
            ("POST", EXCHANGE_PATH): oauth.exchange,
            ("POST", DI_TOKEN_PATH): di_oauth.token,
            ("GET", PROFILE_PATH): api.profile,
            ("GET", ACTIVITIES_PATH): api.activity_list,
        }
        self._download = api.download
        # Added to every answer (seconds); tests raise it to provoke timeouts everywhere.
        self.latency_seconds = 0.0
        # Per path: requests arrived and not yet answered (outlives reset_records).
        self._in_flight: dict[str, int] = {}

    def arrived(self, path: str) -> None:
        with self._state.lock:
            records = self._state.records
            bump(records.request_counts, path)
            now = self._in_flight[path] = self._in_flight.get(path, 0) + 1
            records.in_flight_peaks[path] = max(records.in_flight_peaks.get(path, 0), now)

    def left(self, path: str) -> None:
        with self._state.lock:
            self._in_flight[path] -= 1

    def take_fault(self, path: str) -> Fault | None:
        return self._faults.take(path)

    def request_counts(self) -> dict[str, int]:
        with self._state.lock:
            return dict(self._state.records.request_counts)

    def route(self, request: Incoming) -> Reply:
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            return handler(request)
        if request.method == "GET" and request.path.startswith(DOWNLOAD_PREFIX):
            return self._download(request)
        if any(path == request.path for _, path in self._routes) or request.path.startswith(
            DOWNLOAD_PREFIX
        ):
            return error_reply(405, "method not allowed")
        return error_reply(404, "no such endpoint")
