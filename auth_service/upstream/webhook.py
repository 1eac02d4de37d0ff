"""The webhook receiver over HTTP: implements auth_service.domain.change_ports.WebhookSender.

Not Garmin, but the other party the service calls over HTTP, so it lives with the upstream
adapters. One POST per call, no retry here: auth_service.services.webhooks retries with
backoff from the durable cursor, and urllib3's own retries are off, as in garmin_client's
transport, so one layer decides when to repeat.

Only the answer's status matters. Its body is read, and dropped, up to ANSWER_BODY_BOUND: one
that ends within it leaves the connection open for the next POST (each change is one POST, and
a new TCP and TLS handshake for each would throttle delivery to a remote receiver); a longer
one (a receiver, or a proxy in front of it, could send one for ever, or gigabytes) costs the
connection, never more memory. And each POST ends by a deadline as a whole (twice the timeout:
connect, then the answer; garmin_client.call_deadline), not only per read as requests'
timeouts do. The cursor's claim (4 x timeout + 10 s) outlasts that deadline, so no other
replica posts meanwhile, and a stopping replica's last POST ends within its grace.

Credentials in the URL (`https://user:password@host/...`) go as HTTP Basic, set here:
upstream_session()'s guard against a netrc file also stops requests from sending them.

Signature (Stripe's scheme): `X-Garmin-Auth-Signature: t=<unix seconds>,v1=<hex>` where hex is
HMAC-SHA256 over `<t>.<body>` with the shared secret. Receivers recompute it, compare in
constant time and refuse old `t` (replays).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

import requests
from requests.auth import HTTPBasicAuth

from auth_service.domain.change_ports import WebhookUndelivered
from garmin_client.call_deadline import CallDeadline, DeadlineAdapter
from garmin_client.http_session import upstream_session

SIGNATURE_HEADER = "X-Garmin-Auth-Signature"
USER_AGENT = "garmin-auth-webhooks/1"

# How much of an answer's body is read (and dropped) to keep its connection for the next POST:
# an acknowledgement is a few bytes, or a short error page; past this, closing the connection
# is cheaper than downloading whatever the receiver sends.
ANSWER_BODY_BOUND = 64 * 1024
_READ_CHUNK = 16 * 1024


def post_deadline_seconds(timeout_seconds: float) -> float:
    """When a POST ends at the latest: a connect and an answer timeout (WebhookSettings'
    claim_seconds outlasts twice this)."""
    return 2 * timeout_seconds


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
        self._url, self._auth = _without_credentials(url)
        self._secret = secret
        self._timeout = timeout_seconds
        self._deadline = post_deadline_seconds(timeout_seconds)
        self._clock = clock
        self._http = upstream_session()
        adapter = DeadlineAdapter(max_retries=0)
        self._http.mount("https://", adapter)
        self._http.mount("http://", adapter)

    def __repr__(self) -> str:
        return f"HttpWebhookSender(url={self._url!r}, secret=<redacted>)"

    def send(self, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",  # the body is dropped: no need to inflate it
            SIGNATURE_HEADER: signature(self._secret, int(self._clock()), body),
        }
        with CallDeadline(self._deadline) as deadline:
            try:
                response = self._http.post(
                    self._url,
                    data=body,
                    headers=headers,
                    auth=self._auth,  # None: the session's no-op auth (no netrc)
                    timeout=(self._timeout, self._timeout),
                    allow_redirects=False,
                    stream=True,  # returns after the headers: _finish reads the body
                )
            # Only the type: a message could echo the URL. ValueError: a host name the resolver
            # cannot encode (an empty or over-long label) fails outside requests' exceptions.
            except (requests.RequestException, ValueError) as exc:
                if deadline.expired:
                    raise WebhookUndelivered(f"no answer within {self._deadline:g} s") from None
                raise WebhookUndelivered(f"no answer: {type(exc).__name__}") from None
            _finish(response)
        if not 200 <= response.status_code < 300:  # noqa: PLR2004 - the 2xx range
            raise WebhookUndelivered(f"HTTP {response.status_code}")


def _without_credentials(url: str) -> tuple[str, HTTPBasicAuth | None]:
    """The URL to request, without its userinfo, and HTTP Basic from that userinfo, if any.

    Percent-decoded to bytes (as RFC 3986 writes them), so any password goes as its octets;
    requests would take text as Latin-1 and fail every POST on other characters."""
    parts = urlsplit(url)
    if parts.username is None:  # no "@" before the host
        return url, None
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if not parts.username and not parts.password:
        return bare, None
    user = unquote_to_bytes(parts.username)
    return bare, HTTPBasicAuth(user, unquote_to_bytes(parts.password or ""))


def _finish(response: requests.Response) -> None:
    """Reads the answer's body a chunk at a time, dropping each, until it ends or passes
    ANSWER_BODY_BOUND. Then close() puts the connection back in the pool if the body ended
    (requests marked it consumed), and closes it otherwise: past the bound, or cut by the
    deadline or the receiver."""
    read = 0
    with contextlib.suppress(requests.RequestException):  # the status stands all the same
        for chunk in response.iter_content(_READ_CHUNK):
            read += len(chunk)
            if read > ANSWER_BODY_BOUND:
                break
    response.close()
