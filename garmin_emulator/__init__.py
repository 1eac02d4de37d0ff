"""A stand-in for Garmin over real HTTP, for tests, benchmarks and the demo only.

It emulates the Garmin endpoints garth 0.8.0 calls, serving on one plain-HTTP port what garth
believes are several https hosts:

* the mobile JSON SSO of sso.garmin.com (`sso`): sign-in page and cookie, login, MFA code;
* the OAuth1-signed token endpoints of connectapi.garmin.com (`oauth`), whose HMAC-SHA1
  signatures are verified against the original https URL (rebuilt from the
  ``X-Forwarded-Host`` header the adapter's transport adds);
* the Bearer API the sync needs (`connect_api`): profile, activity list, downloads.

Tests drive it through `GarminEmulator`'s thread-safe methods (``add_user``,
``revoke_tokens``, ``fail_next``...); `python -m garmin_emulator --port N` runs it for demos
and benchmarks (`cli`), and a process that runs it reads its request counters at
``GET /__emulator/request-counts`` (no latency, not counted, not Garmin's). Every answer,
including to malformed requests, is JSON unless Garmin would answer otherwise.

The other modules: `state` (what it remembers), `activities` (made-up activities and files),
`faults` (injected failures), `routes` (which endpoint answers), `server` (the HTTP side),
`wire` (request and reply values), `endpoints` (the paths).

Nothing in auth_service/, sync_worker/ or garmin_client/ imports it (an import-linter contract)
and the product image does not ship it; the demo imports it only when it runs.
"""

from garmin_emulator.emulator import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, GarminEmulator
from garmin_emulator.endpoints import (
    ACTIVITIES_PATH,
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
from garmin_emulator.state import ApiCall, EmulatedUser, SecretListener

__all__ = [
    "ACTIVITIES_PATH",
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "DOWNLOAD_PREFIX",
    "EMBED_PATH",
    "EXCHANGE_PATH",
    "FAULT_HANG",
    "FAULT_RESET",
    "LOGIN_PATH",
    "PREAUTHORIZED_PATH",
    "PROFILE_PATH",
    "REQUEST_COUNTS_PATH",
    "SIGN_IN_PATH",
    "VERIFY_MFA_PATH",
    "ApiCall",
    "EmulatedUser",
    "GarminEmulator",
    "SecretListener",
]
