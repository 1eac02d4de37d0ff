"""The URL paths the emulator answers: Garmin's (as garth 0.8.0 and the DI OAuth2 clients call
them) and its own."""

from __future__ import annotations

# sso.garmin.com: the mobile JSON sign-in.
SIGN_IN_PATH = "/mobile/sso/en/sign-in"
LOGIN_PATH = "/mobile/api/login"
VERIFY_MFA_PATH = "/mobile/api/mfa/verifyCode"
EMBED_PATH = "/portal/sso/embed"
# connectapi.garmin.com: the OAuth1-signed token endpoints.
PREAUTHORIZED_PATH = "/oauth-service/oauth/preauthorized"
EXCHANGE_PATH = "/oauth-service/oauth/exchange/user/2.0"
# diauth.garmin.com (diauth.garmin.cn for garmin.cn accounts): DI OAuth2 tickets and refreshes.
DI_TOKEN_PATH = "/di-oauth2-service/oauth/token"  # noqa: S105 (a path)
# connectapi.garmin.com: the Bearer API the sync needs.
PROFILE_PATH = "/userprofile-service/socialProfile"
ACTIVITIES_PATH = "/activitylist-service/activities/search/activities"
DOWNLOAD_PREFIX = "/download-service/files/activity/"
# The emulator's own control endpoints (for a process that runs it; garmin_emulator.control):
# request counts by path, DI token pairs issued in bulk, what the DI token endpoint saw.
CONTROL_PREFIX = "/__emulator/"
REQUEST_COUNTS_PATH = CONTROL_PREFIX + "request-counts"
DI_TOKENS_PATH = CONTROL_PREFIX + "di-tokens"
DI_RECORDS_PATH = CONTROL_PREFIX + "di-records"
