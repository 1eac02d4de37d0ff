"""Authenticated GETs on Garmin's Connect API as one user (the sync worker's Garmin calls).

Raises only garmin_client.errors, with messages that never contain a token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any

from requests.models import Response

from garmin_client.answers import failure
from garmin_client.errors import AccessTokenRejected, Unavailable
from garmin_client.garth_tokens import oauth1_to_garth, oauth2_from_garth, oauth2_to_garth
from garmin_client.isolation import (
    GARTH_FAILURES,
    GarthOAuth1Token,
    GarthOAuth2Token,
    IsolatedClient,
    consumer_of,
)
from garmin_client.settings import UpstreamSettings
from garmin_client.tokens import GarminTokens


def _check_api_path(path: str) -> None:
    """Refuse anything but a path: garth urljoin()s it, and an absolute URL there would carry
    the user's bearer token to another host."""
    if (
        not path.startswith("/")
        or path.startswith("//")
        or "\\" in path
        or any(ch in path for ch in "\r\n\t ")
    ):
        raise ValueError(
            "expected an absolute path on the Connect API, like /userprofile-service/..."
        )


class GarminApiSession:
    """Authenticated GETs on Garmin's Connect API as one user.

    garth refreshes an expired access token on its own before a call; a 401 on a token
    believed valid triggers one refresh and one retry. After the session, ``current_tokens()``
    returns the refreshed tokens to store (None when nothing was refreshed).

    Not thread-safe: use one GarminApiSession per user per thread.
    """

    def __init__(self, tokens: GarminTokens, settings: UpstreamSettings) -> None:
        self._tokens = tokens
        self._settings = settings
        self._client = IsolatedClient(settings, tokens.domain)
        self._initial_oauth2 = oauth2_to_garth(tokens.oauth2, time.time())
        self._client.oauth1_token = oauth1_to_garth(tokens.oauth1_token(), tokens.domain)
        self._client.oauth2_token = self._initial_oauth2

    def __enter__(self) -> GarminApiSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a Connect API path and return its JSON (None for 204 No Content)."""
        response = self._get(path, params, "Connect API call")
        if response.status_code == HTTPStatus.NO_CONTENT:
            return None
        try:
            return response.json()
        except ValueError:
            raise Unavailable("Garmin answered something unreadable (Connect API)") from None

    def download(self, path: str) -> bytes:
        """GET a Connect API path and return its body (e.g. an activity's zip)."""
        return self._get(path, None, "download").content

    @property
    def refreshed(self) -> bool:
        """Whether the access token was refreshed during the session (and OAuth1 is intact)."""
        oauth2 = self._client.oauth2_token
        return (
            isinstance(self._client.oauth1_token, GarthOAuth1Token)
            and isinstance(oauth2, GarthOAuth2Token)
            and oauth2 is not self._initial_oauth2
        )

    def current_tokens(self) -> GarminTokens | None:
        """The refreshed tokens to store, or None when nothing was refreshed."""
        oauth2 = self._client.oauth2_token
        if not self.refreshed or not isinstance(oauth2, GarthOAuth2Token):
            return None
        return GarminTokens(
            oauth1=self._tokens.oauth1,
            oauth2=oauth2_from_garth(oauth2),
            domain=self._tokens.domain,
        )

    def _get(self, path: str, params: Mapping[str, Any] | None, operation: str) -> Response:
        _check_api_path(path)
        token_before = self._client.oauth2_token
        try:
            return self._send(path, params, operation)
        except AccessTokenRejected:
            if self._client.oauth2_token is not token_before:
                raise  # refused a token Garmin issued moments ago, within this very call
            # Refused although not expired: only a refused exchange proves the session dead.
            self._refresh(operation)
            return self._send(path, params, operation)

    def _send(self, path: str, params: Mapping[str, Any] | None, operation: str) -> Response:
        with consumer_of(self._settings):
            try:
                # headers={} every time: garth writes Authorization into its shared default.
                return self._client.request(
                    "GET", "connectapi", path, api=True, params=params, headers={}
                )
            except GARTH_FAILURES as exc:
                raise failure(operation, exc, judging_tokens=True) from None

    def _refresh(self, operation: str) -> None:
        with consumer_of(self._settings):
            try:
                self._client.refresh_oauth2()
            except GARTH_FAILURES as exc:
                raise failure(operation, exc, judging_tokens=True) from None
