"""Speaking Garmin's DI sign-in to the emulator by hand, with plain requests (no adapter): the
mobile login, the token endpoint and the JWT's payload."""

from __future__ import annotations

import base64
import json
from typing import Any

import requests

from garmin_emulator import (
    DI_TOKEN_PATH,
    IOS_SERVICE_URL,
    KNOWN_DI_CLIENT_IDS,
    LOGIN_PATH,
    REFRESH_TOKEN_GRANT,
    SERVICE_TICKET_GRANT,
    VERIFY_MFA_PATH,
    GarminEmulator,
)

TIMEOUT = 5
CLIENT_ID = KNOWN_DI_CLIENT_IDS[0]
DIAUTH = "diauth.garmin.com"
# The Android app's headers, as the facts file records them.
APP = {
    "User-Agent": "GCM-Android-5.23",
    "X-Garmin-User-Agent": (
        "com.garmin.android.apps.connectmobile/5.23; ; "
        "Google/sdk_gphone64_arm64/google; Android/33; Dalvik/2.1.0"
    ),
    "X-Garmin-Paired-App-Version": "10861",
    "X-Garmin-Client-Platform": "Android",
    "X-App-Ver": "10861",
    "X-Lang": "en",
    "X-GCExperience": "GC5",
}


def sso_params(service: str = IOS_SERVICE_URL) -> dict[str, str]:
    return {"clientId": "GCM_IOS_DARK", "locale": "en-US", "service": service}


def mobile_login(
    emulator: GarminEmulator,
    email: str,
    password: str,
    *,
    http: requests.Session | None = None,
    service: str = IOS_SERVICE_URL,
) -> requests.Response:
    """The mobile JSON login, without loading a sign-in page first."""
    return (http or requests.Session()).post(
        f"{emulator.url}{LOGIN_PATH}",
        params=sso_params(service),
        json={"username": email, "password": password, "rememberMe": True, "captchaToken": ""},
        timeout=TIMEOUT,
    )


def verify_mfa(
    emulator: GarminEmulator, http: requests.Session, code: str, method: str = "email"
) -> requests.Response:
    return http.post(
        f"{emulator.url}{VERIFY_MFA_PATH}",
        params=sso_params(),
        json={
            "mfaMethod": method,
            "mfaVerificationCode": code,
            "rememberMyBrowser": True,
            "reconsentList": [],
            "mfaSetup": False,
        },
        timeout=TIMEOUT,
    )


def ticket_for(emulator: GarminEmulator, email: str, password: str, **kwargs: Any) -> str:
    answer = mobile_login(emulator, email, password, **kwargs)
    assert answer.status_code == 200, answer.text
    ticket: str = answer.json()["serviceTicketId"]
    return ticket


def basic(client_id: str, secret: str = "") -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def token_call(
    emulator: GarminEmulator,
    form: dict[str, str],
    *,
    authorization: str | None = None,
    host: str = DIAUTH,
    timeout: float = TIMEOUT,
) -> requests.Response:
    """POST the token endpoint as the service would route it (original host kept)."""
    headers = {**APP, "Accept": "application/json", "X-Forwarded-Host": host}
    headers["Authorization"] = authorization or basic(form.get("client_id", ""))
    return requests.post(
        f"{emulator.url}{DI_TOKEN_PATH}", data=form, headers=headers, timeout=timeout
    )


def exchange(
    emulator: GarminEmulator,
    ticket: str,
    *,
    service_url: str = IOS_SERVICE_URL,
    client_id: str = CLIENT_ID,
    host: str = DIAUTH,
) -> requests.Response:
    return token_call(
        emulator,
        {
            "client_id": client_id,
            "service_ticket": ticket,
            "grant_type": SERVICE_TICKET_GRANT,
            "service_url": service_url,
        },
        host=host,
    )


def refresh(
    emulator: GarminEmulator,
    refresh_token: str,
    *,
    client_id: str = CLIENT_ID,
    host: str = DIAUTH,
    timeout: float = TIMEOUT,
) -> requests.Response:
    form = {
        "grant_type": REFRESH_TOKEN_GRANT,
        "client_id": client_id,
        "refresh_token": refresh_token,
    }
    return token_call(emulator, form, host=host, timeout=timeout)


def jwt_payload(token: str) -> dict[str, Any]:
    """What any client reads from a DI access token: the JWT's middle part."""
    part = token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return payload
