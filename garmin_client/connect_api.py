"""GETs on Garmin's Connect API with an access token only (no garth, nothing long-lived).

The sync worker holds a lease's access token and nothing that outlives it (issue 13): it sends
the token as a bearer with the mobile app's headers to connectapi.<domain>, through the one
transport (routing, timeout, retries). Raises only garmin_client.errors: a 401 is
AccessTokenRejected (the holder may ask the service for a fresh token), 429 RateLimited, the
rest Unavailable. Messages never contain the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final

import requests
from requests.models import Response

from garmin_client.answers import failure
from garmin_client.endpoints import DOMAINS
from garmin_client.errors import Unavailable
from garmin_client.observe import RequestObserver
from garmin_client.proxy_environment import read_environment_once
from garmin_client.settings import UpstreamSettings
from garmin_client.transport import UpstreamTransport

# What Garmin Connect's Android app sends with every API call (docs: garmin-di-auth.md).
APP_HEADERS: Final = {
    "User-Agent": "GCM-Android-5.23",
    "X-Garmin-User-Agent": (
        "com.garmin.android.apps.connectmobile/5.23; ; Google/sdk_gphone64_arm64/google; "
        "Android/33; Dalvik/2.1.0"
    ),
    "X-Garmin-Paired-App-Version": "10861",
    "X-Garmin-Client-Platform": "Android",
    "X-App-Ver": "10861",
    "X-Lang": "en",
    "X-GCExperience": "GC5",
}


def check_api_path(path: str) -> None:
    """Refuse anything but a path: an absolute URL would carry the bearer to another host."""
    if (
        not path.startswith("/")
        or path.startswith("//")
        or "\\" in path
        or any(ch in path for ch in "\r\n\t ")
    ):
        raise ValueError(
            "expected an absolute path on the Connect API, like /userprofile-service/..."
        )


class ConnectApi:
    """One HTTP session to connectapi.<domain>. Thread-safe as requests' Session is for GETs;
    the worker keeps one per sync thread (sync_worker.connect_apis)."""

    def __init__(
        self, settings: UpstreamSettings, domain: str, observer: RequestObserver | None = None
    ) -> None:
        if domain not in DOMAINS:
            raise ValueError("unknown Garmin domain")
        self._base = f"https://connectapi.{domain}"
        self._session = requests.Session()
        self._session.mount("https://", UpstreamTransport(settings, observer))
        read_environment_once(self._session)
        self._timeout = settings.timeout_seconds

    def __enter__(self) -> ConnectApi:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def forget_cookies(self) -> None:
        """Drop the cookies Garmin set: the next caller's requests must not carry them."""
        self._session.cookies.clear()

    def get_json(
        self, path: str, access_token: str, params: Mapping[str, Any] | None = None
    ) -> Any:
        """GET a Connect API path and return its JSON (None for 204 No Content)."""
        response = self._get(path, access_token, params, "Connect API call")
        if response.status_code == HTTPStatus.NO_CONTENT:
            return None
        try:
            return response.json()
        except ValueError:
            raise Unavailable("Garmin answered something unreadable (Connect API)") from None

    def download(self, path: str, access_token: str) -> bytes:
        """GET a Connect API path and return its body (e.g. an activity's zip)."""
        return self._get(path, access_token, None, "download").content

    def _get(
        self,
        path: str,
        access_token: str,
        params: Mapping[str, Any] | None,
        operation: str,
    ) -> Response:
        check_api_path(path)
        headers = {**APP_HEADERS, "Authorization": f"Bearer {access_token}"}
        try:
            response = self._session.get(
                self._base + path, params=params, headers=headers, timeout=self._timeout
            )
            response.raise_for_status()
        except requests.RequestException as exc:
            raise failure(operation, exc, judging_tokens=True) from None
        return response
