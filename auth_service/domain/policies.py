"""The service's policies as plain values: lease lifetimes, login throttling, MFA challenges,
central refresh and keep-alive, and how the service signs in to Garmin (which flow, the
DI sign-in's uncertain points).

auth_service.config reads them from the environment; the use cases only ever see these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from auth_service.domain.models import GarminTokens, SessionKind

# An access token this close to its expiry is refreshed before use, so it does not lapse
# mid-call (the garth provider's validate uses the same margin).
ACCESS_EXPIRY_MARGIN = timedelta(seconds=30)

# The Garmin Connect apps' service URLs: tickets for them give tokens the API accepts (the
# browser widget's URL gives tokens the API refuses for some accounts since June 2026).
IOS_SERVICE_URL: Final = "https://mobile.integration.garmin.com/gcm/ios"
ANDROID_SERVICE_URL: Final = "https://mobile.integration.garmin.com/gcm/android"


@dataclass(frozen=True)
class LeaseSettings:
    """Lease lifetimes, in seconds."""

    default_ttl: float = 300.0
    max_ttl: float = 3600.0
    # The shortest ttl a caller may ask for; shorter leases would expire mid-RPC.
    min_ttl: float = 5.0


class LoginFlow(enum.StrEnum):
    """GARMIN_AUTH_LOGIN_FLOW: which sign-in new logins use."""

    DI = "di"
    GARTH = "garth"


# The longest sign-in cooldown a Retry-After can impose. Longer than the wait it may impose on
# the account's other calls (GARMIN_AUTH_RATE_LIMIT_MAX_WAIT): a sign-in held back costs the
# user a wait, where a refresh held back could cost the session. Only a bound on a header
# that could say anything.
SIGNIN_RETRY_AFTER_MAX_SECONDS = 86400.0


@dataclass(frozen=True)
class LoginSettings:
    """Login throttling and MFA challenges."""

    limit: int = 5
    window_seconds: float = 3600.0
    mfa_challenge_ttl_seconds: float = 600.0
    mfa_max_wrong_codes: int = 3
    # After Garmin's sign-in answered 429 for an account, its logins wait this long (or
    # Garmin's Retry-After, if longer, up to SIGNIN_RETRY_AFTER_MAX_SECONDS) without calling
    # Garmin.
    signin_cooldown_seconds: float = 7200.0
    # How long an MFA code, with its ticket exchange, may be with Garmin: a SubmitMfa holds
    # its challenge that long (config.mfa_claim_seconds: from the upstream timeout, the
    # retries and the client ids).
    mfa_claim_seconds: float = 120.0
    # How long a Login or SubmitMfa holds the Garmin account (and the gate's call of the
    # user) against another sign-in: all its calls at their worst (config.signin_claim_
    # seconds); never under the gate's probe timeout. 0: the probe timeout alone.
    signin_claim_seconds: float = 0.0
    # The service URLs a DI ticket may be issued for; the first is the default (logins ask
    # for it, ExchangeServiceTicket assumes it).
    service_urls: tuple[str, ...] = (IOS_SERVICE_URL, ANDROID_SERVICE_URL)
    # Which sign-in new logins use (GARMIN_AUTH_LOGIN_FLOW): it decides the endpoints a
    # login reaches, whose breakers it honours.
    flow: LoginFlow = LoginFlow.DI


# The client ids Garmin's apps use for DI OAuth2, newest first.
KNOWN_DI_CLIENT_IDS: Final = (
    "GARMIN_CONNECT_MOBILE_ANDROID_DI_2025Q2",
    "GARMIN_CONNECT_MOBILE_ANDROID_DI_2024Q4",
    "GARMIN_CONNECT_MOBILE_ANDROID_DI",
    "GARMIN_CONNECT_MOBILE_IOS_DI",
)
# A refresh answer usually omits the new refresh token's lifetime; ~30 days is what Garmin
# states when it does.
DEFAULT_REFRESH_LIFETIME_SECONDS: Final = 30 * 86400
DEFAULT_IMPERSONATE: Final = "safari_ios"


class RefusedClientId(enum.StrEnum):
    """What a ticket exchange does when Garmin refuses a client id."""

    # Give up: whether a refused client id burns the single-use ticket is not known, and a
    # burnt ticket tried again only adds refusals.
    STOP = "stop"
    # Try the next configured client id with the same ticket (python-garminconnect does).
    NEXT = "next"


@dataclass(frozen=True)
class DiSettings:
    """How the DI provider signs in and refreshes (every uncertain point is one of these)."""

    client_ids: tuple[str, ...] = KNOWN_DI_CLIENT_IDS
    # The service URL logins ask tickets for (the first of GARMIN_AUTH_DI_SERVICE_URLS).
    service_url: str = IOS_SERVICE_URL
    # curl_cffi's browser profile for the SSO calls' TLS handshake.
    impersonate: str = DEFAULT_IMPERSONATE
    # Send the SSO calls with plain requests instead (e.g. to the emulator on http://).
    plain_http: bool = False
    on_refused_client_id: RefusedClientId = RefusedClientId.STOP
    # The refresh-token lifetime assumed when Garmin never stated one for the session.
    refresh_lifetime_seconds: int = DEFAULT_REFRESH_LIFETIME_SECONDS
    # When a refresh answer states no refresh expiry: does the rotation restart the refresh
    # token's lifetime (reported, uncertain) or does the new token keep the old one's expiry?
    rotation_restarts_refresh_expiry: bool = True


@dataclass(frozen=True)
class RefreshSettings:
    """Central refresh (one replica per rotation) and keep-alive of DI sessions, in seconds."""

    # Refreshes in flight to Garmin at once, per replica, whatever asks for them.
    concurrency: int = 4
    # Longer than one Garmin call can take (timeout x attempts), plus a margin.
    claim_seconds: float = 60.0
    # How long a refresh that found another replica's claim waits for its answer.
    wait_seconds: float = 70.0
    # How long a rotated pair is retried into a database that refuses the commit.
    commit_retry_seconds: float = 600.0
    # Keep-alive: how often, and how far ahead of the refresh token's death, it refreshes.
    keepalive_interval_seconds: float = 300.0
    keepalive_window_seconds: float = 604800.0
    # Sessions one keep-alive pass takes on at most (soonest expiry first).
    keepalive_batch: int = 1000
    # Keep-alive refreshes started per second per replica at most (spaced with jitter).
    keepalive_rate: float = 10.0
    # How long keep-alive leaves a session alone after its refresh failed (GarminUnavailable:
    # a 5xx, a timeout, a refused client id; a secret no key opens; an unexpected error) or
    # met Garmin's 429. Some of these fail on every try (a refused client id, a lost key, an
    # account Garmin blocks for hours): retried on every pass, such sessions stay at the head
    # of the order and a batch of them (or one 429, which ends the pass) starves every other
    # session. An hour costs a session that failed only once little against a week-long
    # window.
    keepalive_retry_seconds: float = 3600.0
    # GetStatus(validate) calls Garmin for a user at most once per this many seconds, per
    # replica (0: no limit); sooner asks answer VALIDATE_RATE_LIMITED.
    validate_interval_seconds: float = 60.0
    # A garth session whose exchange Garmin refused in doubt (auth_service.upstream.garth.
    # exchange_refusals) ends at a refusal this long after its first such refusal since its
    # tokens last changed (0: never on doubtful refusals): doubtful_refusal_ends.
    garth_refusal_grace_seconds: float = 7 * 86400.0

    @property
    def claim_lifetime_seconds(self) -> float:
        """How long a claim on a refresh lasts: as long as its holder may still store what
        Garmin answered (one Garmin call, then the commit retried for commit_retry_seconds),
        so only a claim whose holder died ever expires. A claim that expired while its
        holder kept a rotated pair unstored (its database unreachable) would let another
        replica send the refresh token that rotation killed, read invalid_grant, and end a
        session whose new pair was about to land."""
        return self.claim_seconds + self.commit_retry_seconds


def refresh_due(tokens: GarminTokens, until: datetime) -> bool:
    """Whether `tokens` must be refreshed to stay usable until `until`: the access token
    expires by then or, for a DI session, its refresh token would die (or its expiry is
    unknown). Callers that use the token at once pass now + ACCESS_EXPIRY_MARGIN."""
    if tokens.oauth2.expires_at <= until:
        return True
    if tokens.kind is not SessionKind.DI_OAUTH2:
        return False
    dies_at = tokens.oauth2.refresh_token_expires_at
    return dies_at is None or dies_at <= until


def keepalive_not_before(tokens: GarminTokens, now: datetime, window: timedelta) -> datetime | None:
    """When keep-alive may next pick a session that was just given `tokens` (None: as soon
    as it is due, which an unknown refresh expiry is at once).

    Keep-alive picks DI sessions whose refresh token dies within its `window`. A refresh
    that does not move the expiry out of the window (GARMIN_AUTH_DI_REFRESH_EXPIRY_ON_ROTATION
    =keep, or a lifetime Garmin states shorter than the window; a configured one is refused)
    must not be repeated on every pass: that is the load Garmin answers with 429s. Half the
    time the refresh token has left (at most half the window) still refreshes a short-lived
    token long before it dies, and an expiry that stays put is approached in halving steps.
    """
    dies_at = tokens.oauth2.refresh_token_expires_at
    if tokens.kind is not SessionKind.DI_OAUTH2 or dies_at is None:
        return None
    left = max(min(window, dies_at - now), timedelta(0))
    return now + left / 2


# The shortest hold-back of a failed keep-alive refresh: a token about to die is still not
# asked for more often than this.
KEEPALIVE_SHORTEST_RETRY = timedelta(minutes=1)
# The longest hold-back its doubling reaches (a longer keepalive_retry_seconds is kept as
# is): Garmin blocks an account for hours to days, and a session that fails every time is
# still tried once a day, whatever its trouble was.
KEEPALIVE_LONGEST_RETRY = timedelta(days=1)


def keepalive_retry_at(
    dies_at: datetime | None, now: datetime, retry: timedelta, failures: int = 0
) -> datetime:
    """When keep-alive may try again a session whose refresh just failed without a verdict
    (a 5xx, a timeout, a 429), `failures` attempts having failed before this one: after
    `retry` (RefreshSettings.keepalive_retry_seconds), doubled for each of those (1 h, 2 h,
    4 h, ... at most a day), so sessions Garmin keeps refusing cost keep-alive less and less;
    but while its refresh token still lives, after half the time it has left at most (never
    sooner than a minute), so no run of failures can leave it to die unrefreshed."""
    longest = max(retry, KEEPALIVE_LONGEST_RETRY)
    wait = retry
    # Doubled step by step up to the cap (retry * 2**failures would overflow a timedelta).
    for _ in range(failures):
        if wait >= longest:
            break
        wait *= 2
    wait = min(wait, longest)
    if dies_at is None or dies_at <= now:
        return now + wait
    return now + min(wait, max((dies_at - now) / 2, KEEPALIVE_SHORTEST_RETRY))


def keepalive_retry_steps(
    dies_at: datetime | None, now: datetime, retry: timedelta
) -> list[datetime]:
    """keepalive_retry_at for 0, 1, 2, ... earlier failed attempts, up to the first count
    whose hold-back every larger count shares: the last entry stands for any more. The
    statement that counts the failed attempt picks the entry for the count the row holds as
    it writes (another replica's pass may have counted one since this one read it)."""
    steps = [keepalive_retry_at(dies_at, now, retry, 0)]
    while True:
        following = keepalive_retry_at(dies_at, now, retry, len(steps))
        # Never shorter with more failures: once two counts share one, all larger do too.
        if following == steps[-1]:
            return steps
        steps.append(following)


# Passes a session's last stretch (keepalive_last_stretch) spans at least, however long the
# interval: each failed try near the end is retried after half the time left, and only the
# passes that take it can use that.
KEEPALIVE_LAST_PASSES = 3


def keepalive_last_stretch(settings: RefreshSettings) -> timedelta:
    """How long before its refresh token dies a session is taken by expiry first, whatever
    its failed keep-alive attempts: within keepalive_retry_seconds a failed try is retried
    after half the time left rather than the doubled hold-back (keepalive_retry_at), and
    those few tries must each be taken as soon as they are due. Behind the sessions that
    never failed, a session that failed once would wait out any backlog of them, even ones
    with days left, and die. A session Garmin keeps refusing heads passes only in its last
    stretch, a handful of times before it dies (halving its hold-back each time)."""
    return max(
        timedelta(seconds=settings.keepalive_retry_seconds),
        KEEPALIVE_LAST_PASSES * timedelta(seconds=settings.keepalive_interval_seconds),
    )


# A garth session whose exchange Garmin refused in doubt (doubtful_refusal_ends) is not due
# for LeaseNextSession again until this long after its last sync attempt (the skip that
# refusal caused), whatever the worker's minimum interval: every dead one would otherwise be
# asked about at Garmin at every run, and a call skips at most a few sessions that ask Garmin
# before it answers "nothing due", so enough of them at the head of the due order would end
# every run before the users behind them. Over a 7-day grace, 28 asks per dead session.
GARTH_IN_DOUBT_RETRY = timedelta(hours=6)


def doubtful_refusal_ends(
    first_refused_at: datetime | None, now: datetime, grace_seconds: float
) -> bool:
    """Whether Garmin's refusal in doubt, now, of a garth session's exchange (a 401 that may
    be Garmin refusing our OAuth consumer or clock rather than the session: auth_service.
    upstream.garth.exchange_refusals) ends the session, the session's first such refusal since
    its tokens last changed having come at `first_refused_at` (None: this is the first).

    It does once that first refusal is `grace_seconds` (GARMIN_AUTH_GARTH_REFUSAL_GRACE) old:
    a consumer or clock fault that lasts that long has been logged as an error, at most once a
    minute, at every refusal of the whole grace, so by then the refusal is taken as the
    session's. Without it, a dead garth session on a replica that sees no exchange accepted
    (after a restart, or with every garth session left dead) would be kept, and asked about
    at Garmin, for ever. A good session is never ended by one bad minute: a refusal before
    the grace keeps it, and any exchange that works in between stores new tokens, which
    clears the evidence. 0 turns it off (doubtful refusals never end a session)."""
    if grace_seconds <= 0 or first_refused_at is None:
        return False
    return now - first_refused_at >= timedelta(seconds=grace_seconds)
