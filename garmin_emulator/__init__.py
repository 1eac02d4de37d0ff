"""A stand-in for Garmin over real HTTP, for tests, benchmarks and the demo only.

It emulates the Garmin endpoints garth 0.8.0 and the DI OAuth2 clients call, serving on one
plain-HTTP port what its clients believe are several https hosts (the original host arrives in
the ``X-Forwarded-Host`` header the adapters' transports add):

* the mobile JSON SSO of sso.garmin.com (`sso`): sign-in page and cookie, login (with or
  without the page first), MFA code, service tickets bound to their service URL;
* the OAuth1-signed token endpoints of connectapi.garmin.com (`oauth`, garth's), whose
  HMAC-SHA1 signatures are verified against the original https URL;
* the DI OAuth2 token endpoint of diauth.garmin.com / .cn (`di_oauth`): ticket exchange and
  rotating refresh, JWT access tokens (`jwt`) naming the host that issued them, where alone
  their refresh token works; its uncertain points are `options`;
* the Bearer API the sync needs (`connect_api`): profile, activity list, downloads.

Tests drive it through `GarminEmulator`'s thread-safe methods (``add_user``,
``revoke_tokens``, ``fail_next``, the DI ones of `di_controls`...) and read back what Garmin
saw (request and token counts, reuses of dead refresh tokens, requests in flight);
`python -m garmin_emulator --port N` runs it for demos
and benchmarks (`cli`), and a process that runs it uses the control paths of `control`
(no latency, not counted, not Garmin's): ``GET /__emulator/request-counts``,
``POST /__emulator/di-tokens`` (DI token pairs in bulk) and ``GET /__emulator/di-records``.
Every answer, including to malformed requests, is JSON unless Garmin would answer otherwise.

The other modules: `state` (what it remembers), `activities` (made-up activities and files),
`faults` (injected failures), `routes` (which endpoint answers), `server` (the HTTP side),
`control` (the control paths),
`wire` (request and reply values), `endpoints` (the paths).

Nothing in auth_service/, sync_worker/ or garmin_client/ imports it (an import-linter contract)
and the product image does not ship it; the demo imports it only when it runs.
"""

from garmin_emulator.di_controls import BLOCK_CAPTCHA, BLOCK_CLOUDFLARE, BLOCK_RATE_LIMITED
from garmin_emulator.di_oauth import INVALID_TICKET, REFRESH_TOKEN_GRANT, SERVICE_TICKET_GRANT
from garmin_emulator.emulator import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, GarminEmulator
from garmin_emulator.endpoints import (
    ACTIVITIES_PATH,
    DI_RECORDS_PATH,
    DI_TOKEN_PATH,
    DI_TOKENS_PATH,
    DOWNLOAD_PREFIX,
    EMBED_PATH,
    EXCHANGE_PATH,
    LOGIN_PATH,
    PREAUTHORIZED_PATH,
    PROFILE_PATH,
    REQUEST_COUNTS_PATH,
    SIGN_IN_PATH,
    VERIFY_MFA_PATH,
)
from garmin_emulator.faults import FAULT_HANG, FAULT_RESET
from garmin_emulator.options import (
    ANDROID_SERVICE_URL,
    DEFAULT_DI_DOMAIN,
    DI_DOMAINS,
    EMBED_SERVICE_URL,
    IOS_SERVICE_URL,
    KNOWN_DI_CLIENT_IDS,
    DiOptions,
)
from garmin_emulator.state import ApiCall, EmulatedUser, SecretListener, TokenRequest
from garmin_emulator.wire import APP_HEADERS

__all__ = [
    "ACTIVITIES_PATH",
    "ANDROID_SERVICE_URL",
    "APP_HEADERS",
    "BLOCK_CAPTCHA",
    "BLOCK_CLOUDFLARE",
    "BLOCK_RATE_LIMITED",
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "DEFAULT_DI_DOMAIN",
    "DI_DOMAINS",
    "DI_RECORDS_PATH",
    "DI_TOKENS_PATH",
    "DI_TOKEN_PATH",
    "DOWNLOAD_PREFIX",
    "EMBED_PATH",
    "EMBED_SERVICE_URL",
    "EXCHANGE_PATH",
    "FAULT_HANG",
    "FAULT_RESET",
    "INVALID_TICKET",
    "IOS_SERVICE_URL",
    "KNOWN_DI_CLIENT_IDS",
    "LOGIN_PATH",
    "PREAUTHORIZED_PATH",
    "PROFILE_PATH",
    "REFRESH_TOKEN_GRANT",
    "REQUEST_COUNTS_PATH",
    "SERVICE_TICKET_GRANT",
    "SIGN_IN_PATH",
    "VERIFY_MFA_PATH",
    "ApiCall",
    "DiOptions",
    "EmulatedUser",
    "GarminEmulator",
    "SecretListener",
    "TokenRequest",
]
