"""How the emulator plays Garmin's DI OAuth2 sign-in where the sources disagree or say nothing.

Every point the collected sources leave uncertain (python-garminconnect 0.3.12, garth 0.8.0's
cassettes, the issue trackers of projects that moved to DI in 2026) is a field here, so a test
can pin each variant the service must survive; the defaults are the sources' best reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The client ids Garmin's apps use for DI OAuth2, newest first.
KNOWN_DI_CLIENT_IDS = (
    "GARMIN_CONNECT_MOBILE_ANDROID_DI_2025Q2",
    "GARMIN_CONNECT_MOBILE_ANDROID_DI_2024Q4",
    "GARMIN_CONNECT_MOBILE_ANDROID_DI",
    "GARMIN_CONNECT_MOBILE_IOS_DI",
)
# The Garmin domains with their own diauth host (garmin.cn accounts sign in and refresh at
# diauth.garmin.cn), the first the default; a pair refreshes only at the host that issued it.
DI_DOMAINS = ("garmin.com", "garmin.cn")
DEFAULT_DI_DOMAIN = DI_DOMAINS[0]
# The mobile apps' service URLs: tickets for them give tokens the API accepts.
IOS_SERVICE_URL = "https://mobile.integration.garmin.com/gcm/ios"
ANDROID_SERVICE_URL = "https://mobile.integration.garmin.com/gcm/android"
# The browser widget's service URL: its tokens are refused by the API for some accounts.
EMBED_SERVICE_URL = "https://sso.garmin.com/sso/embed"
# The lifetimes of Garmin's recorded token answer (seconds).
RECORDED_ACCESS_TOKEN_EXPIRES_IN = 105_487
RECORDED_REFRESH_TOKEN_EXPIRES_IN = 2_591_999


@dataclass
class DiOptions:
    """Garmin's DI behaviour as this emulator plays it; fields may change while it runs."""

    # Client ids the token endpoint accepts (any other is refused).
    accepted_client_ids: tuple[str, ...] = KNOWN_DI_CLIENT_IDS
    # Whether a ticket presented with a refused client id is used up (uncertain: one client
    # tries all four ids on one ticket, another refuses to).
    refused_client_burns_ticket: bool = False
    # Whether a ticket presented with another service URL is used up (CAS invalidates a
    # ticket on any validation attempt; Garmin's behaviour is not recorded).
    wrong_service_url_burns_ticket: bool = True
    # Whether presenting a rotated-out refresh token also kills the newest one (uncertain).
    reuse_kills_newest: bool = False
    # Lifetimes of newly issued tokens (seconds); Garmin's range from 4 h to 29 h for access.
    access_token_expires_in: int = RECORDED_ACCESS_TOKEN_EXPIRES_IN
    refresh_token_expires_in: int = RECORDED_REFRESH_TOKEN_EXPIRES_IN
    # Garmin usually leaves refresh_token_expires_in out of refresh answers.
    omit_refresh_expiry_on_refresh: bool = True
    # Fields of every token answer replaced by these values (None: left out): an answer of
    # a shape Garmin was never seen to send, to show the service keeps the pair anyway.
    answer_overrides: dict[str, object] = field(default_factory=dict)
    # Whether a rotation restarts the refresh token's lifetime (reported, uncertain) or the
    # new refresh token keeps the old one's expiry.
    rotation_restarts_refresh_expiry: bool = True
    # Whether the API refuses access tokens whose ticket was issued for EMBED_SERVICE_URL
    # (true for some accounts since June 2026).
    api_refuses_embed_tokens: bool = False
    # The status and OAuth error code of a refused ticket. The facts file records only that
    # the body contains "invalid service ticket provided"; the code is uncertain.
    invalid_ticket_status: int = 400
    invalid_ticket_error: str = "invalid_grant"
    # How long a service ticket lives (seconds), for both sign-in flows.
    ticket_ttl_seconds: float = 60.0
    # How long a login waiting for its MFA code stays usable (seconds; uncertain).
    pending_mfa_ttl_seconds: float = 600.0
