"""connectapi.garmin.com's OAuth1-signed token endpoints: a ticket becomes an OAuth1 token
(preauthorized), an OAuth1 token becomes an OAuth2 access token (exchange). Signatures are
checked (RFC 5849 HMAC-SHA1) against the original https URL garth signed, and their timestamp
against the emulator's clock.

Every refusal is a 401 whatever its cause, as Garmin's: a dead or unknown OAuth1 token, an
unknown consumer key, a signature made with another consumer secret or token secret, a
timestamp too far from Garmin's clock. Garmin's answer is its API server's HTML status page
naming the cause ("OAuthToken is invalid": garth issue #21; "ConsumerKey is invalid":
garmin-csv-plan issue #30); no source records the wording for a bad signature or timestamp, nor
how far off a timestamp may be (TIMESTAMP_TOLERANCE_SECONDS is the emulator's choice).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature as oauth_signature

from garmin_emulator.state import AccessGrant, EmulatorState, OAuth1Grant
from garmin_emulator.wire import Incoming, Reply, error_reply, json_reply

# How far an OAuth1 timestamp may be from Garmin's clock (uncertain: not recorded).
TIMESTAMP_TOLERANCE_SECONDS = 300.0


def refused(message: str) -> Reply:
    """Garmin's 401 to an OAuth1 request it refuses: its API server's HTML status page."""
    page = (
        '<!doctype html><html lang="en"><head><title>HTTP Status 401 \u2013 Unauthorized</title>'
        f"</head><body><h1>HTTP Status 401 \u2013 Unauthorized</h1><p><b>Message</b> {message}</p>"
        "<h3>Garmin Connect API Server</h3></body></html>"
    )
    return Reply(401, page.encode(), content_type="text/html;charset=utf-8")


class OAuth:
    """The token endpoints of one consumer (key and secret), over the shared state."""

    def __init__(
        self,
        state: EmulatorState,
        *,
        consumer_key: str,
        consumer_secret: str,
        access_token_expires_in: int,
        refresh_token_expires_in: int,
    ) -> None:
        self._state = state
        self._consumer_key = consumer_key
        self._consumer_secret = consumer_secret
        self._access_token_expires_in = access_token_expires_in
        self._refresh_token_expires_in = refresh_token_expires_in
        # How far Garmin's clock is ahead of the signer's (negative: behind), as the OAuth1
        # timestamps it checks see it: a replica whose clock is off.
        self.clock_skew_seconds = 0.0

    def preauthorized(self, request: Incoming) -> Reply:
        unverified = self._unverified(request, token_secret=None)
        if unverified is not None:
            return unverified
        with self._state.lock:
            ticket = self._state.tickets.get(request.query.get("ticket", ""))
            if ticket is None or ticket.used or ticket.expires_at < time.time():
                return error_reply(401, "invalid or used ticket")
            ticket.used = True
            grant = OAuth1Grant(
                token=secrets.token_hex(24),
                secret=secrets.token_urlsafe(27),
                email=ticket.email,
                mfa_token=secrets.token_hex(16) if ticket.via_mfa else None,
            )
            self._state.oauth1[grant.token] = grant
            self._state.remember(grant.token, grant.secret, grant.mfa_token)
        answer = {"oauth_token": grant.token, "oauth_token_secret": grant.secret}
        if grant.mfa_token is not None:
            expires = datetime.now(UTC) + timedelta(days=365)
            answer["mfa_token"] = grant.mfa_token
            answer["mfa_expiration_timestamp"] = expires.strftime("%Y-%m-%d %H:%M:%S.000")
        return Reply(200, urlencode(answer).encode(), content_type="text/plain;charset=UTF-8")

    def exchange(self, request: Incoming) -> Reply:
        oauth = request.oauth_params()
        with self._state.lock:
            grant = self._state.oauth1.get(oauth.get("oauth_token", ""))
        if grant is None:
            self._note_consumer(oauth)
            if oauth.get("oauth_consumer_key") != self._consumer_key:
                return refused("ConsumerKey is invalid")
            return refused("OAuthToken is invalid")
        unverified = self._unverified(request, token_secret=grant.secret)
        if unverified is not None:
            return unverified
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        with self._state.lock:
            if grant.revoked:
                return refused("OAuthToken is invalid")
            if grant.mfa_token is not None and form.get("mfa_token") != grant.mfa_token:
                return refused("mfa_token required")
            access_token = "eyJ" + secrets.token_urlsafe(48)
            refresh_token = "eyJ" + secrets.token_urlsafe(32)
            self._state.remember(access_token, refresh_token)
            self._state.access[access_token] = AccessGrant(
                email=grant.email, expires_at=time.time() + self._access_token_expires_in
            )
            counts = self._state.records.exchange_counts
            counts[grant.email] = counts.get(grant.email, 0) + 1
        return json_reply(
            200,
            {
                "scope": "COMMUNITY_COURSE_READ GARMINPAY_WRITE CONNECT_READ CONNECT_WRITE",
                "jti": secrets.token_hex(16),
                "access_token": access_token,
                "token_type": "Bearer",
                "refresh_token": refresh_token,
                "expires_in": self._access_token_expires_in,
                "refresh_token_expires_in": self._refresh_token_expires_in,
            },
        )

    def _unverified(self, request: Incoming, *, token_secret: str | None) -> Reply | None:
        """The 401 for a request whose consumer, signature or timestamp Garmin would refuse
        (None: verified). Counted in records.signature_failures."""
        oauth = request.oauth_params()
        self._note_consumer(oauth)
        if oauth.get("oauth_consumer_key") != self._consumer_key:
            answer = refused("ConsumerKey is invalid")
        elif not (
            oauth.get("oauth_signature_method") == "HMAC-SHA1"
            and "oauth_signature" in oauth
            and (token_secret is None) == ("oauth_token" not in oauth)
            and self._hmac_matches(request, oauth["oauth_signature"], token_secret)
        ):
            answer = refused("Signature is invalid")
        elif not self._timely(oauth.get("oauth_timestamp", "")):
            answer = refused("Timestamp is invalid")
        else:
            return None
        with self._state.lock:
            self._state.records.signature_failures += 1
        return answer

    def _timely(self, timestamp: str) -> bool:
        """Whether the signed timestamp is within the tolerance of Garmin's clock."""
        if not timestamp.isdigit():
            return False
        garmin_now = time.time() + self.clock_skew_seconds
        return abs(int(timestamp) - garmin_now) <= TIMESTAMP_TOLERANCE_SECONDS

    def _note_consumer(self, oauth: Mapping[str, str]) -> None:
        consumer_key = oauth.get("oauth_consumer_key")
        if consumer_key is not None:
            with self._state.lock:
                self._state.records.consumer_keys_seen.append(consumer_key)

    def _hmac_matches(self, request: Incoming, signature: str, token_secret: str | None) -> bool:
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
                oauth_signature.verify_hmac_sha1(oauth_request, self._consumer_secret, token_secret)
            )
        except (ValueError, TypeError, KeyError):
            return False
