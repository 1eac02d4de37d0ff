"""Whether a 401 on garth's OAuth1 -> OAuth2 exchange ends the session, or is Garmin refusing
us.

Garmin answers 401 both to an OAuth1 token it no longer honours (the session is dead) and to a
request it cannot verify: signed with a consumer it does not accept (a typo in
GARMIN_AUTH_OAUTH_CONSUMER_SECRET, a rotated key) or stamped by a clock far off (OAuth1 signs
its timestamp). Its 401 page names the cause ("OAuthToken is invalid", "ConsumerKey is
invalid"), but that HTML is neither documented nor recorded for a bad signature or timestamp,
so it is not read. Taking a refusal of our consumer for the session's end would end every
garth session at its next exchange, and garth sessions cannot be signed in again: a 401 is the
session's end only when this process has seen Garmin accept the same consumer, at the same
domain, since the last time it refused another session:

* no exchange accepted since the process started (a misconfigured consumer, a clock already
  off at start): doubtful;
* a second session refused since the last accepted exchange: doubtful too. One dead session
  between two good ones is Garmin judging tokens; two in a row may as well be our consumer or
  clock failing after the last success, which would otherwise end each session in turn.

A doubtful 401 leaves the session as it is (garmin_client.errors.RefusalInDoubt, an
Unavailable: try later; LeaseNextSession skips the session and grants the next one) and is
logged as an error for the operator; the session is judged again at its next exchange, after
the next accepted one. So a consumer or clock that fails while the service runs ends at most
one session per replica before the grace below, and a dead session waits until some other
session's exchange succeeds, or until that grace runs out: the service's refresher notes in
the session's row when Garmin first refused it in doubt (a restart forgets nothing of that;
new tokens clear it), and ends it at a doubtful refusal GARMIN_AUTH_GARTH_REFUSAL_GRACE (7
days) after that (auth_service.domain.policies.doubtful_refusal_ends): a consumer or clock
fault that lasts that long has been logged below at every refusal of the whole grace, so the
refusal is taken as the session's. The record here is this process's own (replicas judge by
what each has seen) and holds no secret: the consumer and the sessions are kept as digests.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from typing import Final

log = logging.getLogger(__name__)

# Sessions refused since the last accepted exchange that are still taken as dead (see above).
REFUSALS_BELIEVED_IN_A_ROW: Final = 1
# The doubtful refusals' error line is logged at most this often per consumer and domain.
ERROR_LOG_INTERVAL_SECONDS: Final = 60.0
# Refused sessions counted for the error line; beyond, only "at least".
_COUNTED_REFUSALS: Final = 10_000


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class ExchangeRecord:
    """What this process has seen of the exchanges of one consumer at one Garmin domain."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accepted = False
        self._refused: set[str] = set()
        self._logged_at = -math.inf

    def accepted(self) -> None:
        """Garmin accepted an exchange signed with this consumer (a refresh, a sign-in's)."""
        with self._lock:
            self._accepted = True
            self._refused.clear()

    def refused(self, oauth_token: str) -> bool:
        """Garmin answered 401 to the exchange of the session whose OAuth1 token is
        `oauth_token`: whether that is the session's end (else doubtful, logged)."""
        with self._lock:
            if len(self._refused) < _COUNTED_REFUSALS:
                self._refused.add(_digest(oauth_token))
            believed = self._accepted and len(self._refused) <= REFUSALS_BELIEVED_IN_A_ROW
            if believed:
                return True
            now = time.monotonic()
            if now - self._logged_at < ERROR_LOG_INTERVAL_SECONDS:
                return False
            self._logged_at = now
            accepted, refused = self._accepted, len(self._refused)
        log.error(
            "Garmin refused a garth token exchange (HTTP 401), and %s: maybe Garmin refusing "
            "our OAuth consumer or this machine's clock rather than the session, which is kept "
            "until GARMIN_AUTH_GARTH_REFUSAL_GRACE after its first such refusal; if it lasts, "
            "check GARMIN_AUTH_OAUTH_CONSUMER_KEY and GARMIN_AUTH_OAUTH_CONSUMER_SECRET, and "
            "the clock (OAuth1 signs its time)",
            f"{'at least ' if refused >= _COUNTED_REFUSALS else ''}{refused} sessions were "
            "refused since the last exchange it accepted"
            if accepted
            else "it accepted no exchange with this OAuth consumer since the service started",
        )
        return False


_RECORDS: dict[str, ExchangeRecord] = {}
_RECORDS_LOCK: Final = threading.Lock()


def record_of(consumer_key: str, consumer_secret: str, domain: str) -> ExchangeRecord:
    """This process's record of the consumer's exchanges at `domain` (one per consumer: a
    success with another secret proves nothing of this one)."""
    key = _digest(consumer_key, consumer_secret, domain)
    with _RECORDS_LOCK:
        return _RECORDS.setdefault(key, ExchangeRecord())


def forget_all() -> None:
    """Forget every record, as a process that just started (tests: one per test)."""
    with _RECORDS_LOCK:
        _RECORDS.clear()
