"""The webhook receiver over HTTP: implements auth_service.domain.change_ports.WebhookSender.

Not Garmin, but the other party the service calls over HTTP, so it lives with the upstream
adapters. One POST per call, no retry here: auth_service.services.webhooks retries with
backoff from the durable cursor, and urllib3's own retries are off, as in garmin_client's
transport, so one layer decides when to repeat.

Signature (Stripe's scheme): `X-Garmin-Auth-Signature: t=<unix seconds>,v1=<hex>` where hex is
HMAC-SHA256 over `<t>.<body>` with the shared secret. Receivers recompute it, compare in
constant time and refuse old `t` (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import requests
from requests.adapters import HTTPAdapter

from auth_service.domain.change_ports import WebhookUndelivered

SIGNATURE_HEADER = "X-Garmin-Auth-Signature"
USER_AGENT = "garmin-auth-webhooks/1"


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The header's value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class HttpWebhookSender:
    """POSTs signed JSON bodies to one URL."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        timeout_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._secret = secret
        self._timeout = timeout_seconds
        self._clock = clock
        self._http = requests.Session()
        adapter = HTTPAdapter(max_retries=0)
        self._http.mount("https://", adapter)
        self._http.mount("http://", adapter)

    def __repr__(self) -> str:
        return f"HttpWebhookSender(url={self._url!r}, secret=<redacted>)"

    def send(self, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature(self._secret, int(self._clock()), body),
        }
        try:
            response = self._http.post(
                self._url,
                data=body,
                headers=headers,
                timeout=(self._timeout, self._timeout),
                allow_redirects=False,
            )
        # Only the type: a message could echo the URL's credentials, if it holds any.
        except requests.RequestException as exc:
            raise WebhookUndelivered(f"no answer: {type(exc).__name__}") from None
        response.close()
        if not 200 <= response.status_code < 300:  # noqa: PLR2004 - the 2xx range
            raise WebhookUndelivered(f"HTTP {response.status_code}")
