"""Garmin's domains, the Garmin paths whose answers mean something particular, and the name of
each step in messages and logs (a path, never a URL: queries carry SSO tickets)."""

from __future__ import annotations

from typing import Final

DEFAULT_DOMAIN: Final = "garmin.com"
# The domains Garmin accounts live on (garmin.cn for China).
DOMAINS: Final = frozenset({DEFAULT_DOMAIN, "garmin.cn"})
SIGN_IN_PATH: Final = "/mobile/sso/en/sign-in"
LOGIN_PATH: Final = "/mobile/api/login"
VERIFY_MFA_PATH: Final = "/mobile/api/mfa/verifyCode"
EMBED_PATH: Final = "/portal/sso/embed"
PREAUTHORIZED_PATH: Final = "/oauth-service/oauth/preauthorized"
EXCHANGE_PATH: Final = "/oauth-service/oauth/exchange/user/2.0"
PROFILE_PATH: Final = "/userprofile-service/socialProfile"

_STEP_NAMES: Final = {
    SIGN_IN_PATH: "sign-in page",
    LOGIN_PATH: "login",
    VERIFY_MFA_PATH: "MFA verification",
    EMBED_PATH: "SSO embed page",
    PREAUTHORIZED_PATH: "ticket exchange",
    EXCHANGE_PATH: "token exchange",
}


def step_name(path: str) -> str:
    return _STEP_NAMES.get(path, "Connect API")
