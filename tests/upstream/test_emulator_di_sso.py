"""The emulator's mobile sign-in as DI clients speak it (no page load first), spoken to
directly over HTTP: answers, the cookies that carry a pending MFA login, blocked logins."""

from __future__ import annotations

import re
import time

import pytest
import requests

from garmin_emulator import (
    ANDROID_SERVICE_URL,
    BLOCK_CAPTCHA,
    BLOCK_CLOUDFLARE,
    BLOCK_RATE_LIMITED,
    LOGIN_PATH,
    SIGN_IN_PATH,
    EmulatedUser,
    GarminEmulator,
)

from .conftest import PASSWORD
from .di_http import TIMEOUT, mobile_login, sso_params, verify_mfa

pytestmark = pytest.mark.timeout(30)

TICKET = re.compile(r"ST-\d+-[A-Za-z0-9]{20}-sso")
MOBILE_COOKIES = {"SESSION", "CASTGC", "GARMIN-SSO", "__cf_bm"}


def test_login_without_a_page_load_answers_a_ticket_for_its_service_and_sets_cookies(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    http = requests.Session()

    answer = mobile_login(emulator, user.email, PASSWORD, http=http, service=ANDROID_SERVICE_URL)

    assert answer.status_code == 200
    body = answer.json()
    assert body["responseStatus"]["type"] == "SUCCESSFUL"
    assert TICKET.fullmatch(body["serviceTicketId"])
    assert body["serviceURL"] == ANDROID_SERVICE_URL
    assert set(http.cookies.keys()) == MOBILE_COOKIES


def test_wrong_password_is_401_invalid_username_password(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    answer = mobile_login(emulator, user.email, "not the password")
    unknown = mobile_login(emulator, "nobody@example.com", PASSWORD)

    assert answer.status_code == 401
    assert answer.json()["responseStatus"]["type"] == "INVALID_USERNAME_PASSWORD"
    assert unknown.status_code == 401


def test_mfa_completes_on_the_logins_cookies_from_another_client_after_a_wrong_code(
    emulator: GarminEmulator, mfa_user: EmulatedUser
) -> None:
    first = requests.Session()
    login = mobile_login(emulator, mfa_user.email, PASSWORD, http=first)
    # Another replica: a fresh client holding only the stored cookies.
    second = requests.Session()
    second.cookies.update(first.cookies)

    wrong = verify_mfa(emulator, second, "000000")
    right = verify_mfa(emulator, second, mfa_user.mfa_code)
    again = verify_mfa(emulator, second, mfa_user.mfa_code)

    assert login.status_code == 200
    assert login.json()["responseStatus"]["type"] == "MFA_REQUIRED"
    assert login.json()["customerMfaInfo"]["mfaLastMethodUsed"] == "email"
    assert set(first.cookies.keys()) == MOBILE_COOKIES
    assert wrong.json()["responseStatus"]["type"] == "INVALID_MFA_CODE"
    assert right.status_code == 200
    assert right.json()["responseStatus"]["type"] == "SUCCESSFUL"
    assert TICKET.fullmatch(right.json()["serviceTicketId"])
    assert again.status_code == 401  # the pending login is used up


@pytest.mark.parametrize("missing", ["all", "CASTGC", "SESSION"])
def test_mfa_code_without_the_logins_cookies_is_refused(
    emulator: GarminEmulator, mfa_user: EmulatedUser, missing: str
) -> None:
    http = requests.Session()
    mobile_login(emulator, mfa_user.email, PASSWORD, http=http)
    other = requests.Session()
    if missing != "all":
        other.cookies.update({k: v for k, v in http.cookies.items() if k != missing})

    refused = verify_mfa(emulator, other, mfa_user.mfa_code)

    assert refused.status_code == 401
    assert refused.json()["responseStatus"]["type"] == "INVALID_SESSION"
    assert verify_mfa(emulator, http, mfa_user.mfa_code).status_code == 200


def test_a_pending_mfa_login_expires(emulator: GarminEmulator, mfa_user: EmulatedUser) -> None:
    emulator.di.pending_mfa_ttl_seconds = 0.2
    http = requests.Session()
    mobile_login(emulator, mfa_user.email, PASSWORD, http=http)

    time.sleep(0.3)

    assert verify_mfa(emulator, http, mfa_user.mfa_code).status_code == 401


def test_garths_page_first_flow_keeps_the_pages_one_cookie(
    emulator: GarminEmulator, mfa_user: EmulatedUser
) -> None:
    """The page's cookie already carries the SSO session, so the login adds none: garth's
    pending MFA state stays one cookie. (A login without that cookie used to be a 403; the
    DI clients never load the page, so it now starts a session of its own.)"""
    http = requests.Session()
    http.get(f"{emulator.url}{SIGN_IN_PATH}", params={"clientId": "GCM_ANDROID_DARK"}, timeout=5)

    login = mobile_login(emulator, mfa_user.email, PASSWORD, http=http)

    assert login.json()["responseStatus"]["type"] == "MFA_REQUIRED"
    assert list(http.cookies.keys()) == ["GARMIN-SSO-CUST-GUID"]
    assert verify_mfa(emulator, http, mfa_user.mfa_code).status_code == 200


def test_blocked_logins_answer_as_garmins_edge_then_logins_work_again(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    emulator.block_logins(BLOCK_RATE_LIMITED, retry_after=7200)
    emulator.block_logins(BLOCK_RATE_LIMITED)
    emulator.block_logins(BLOCK_CLOUDFLARE)
    emulator.block_logins(BLOCK_CAPTCHA)

    limited = mobile_login(emulator, user.email, PASSWORD)
    limited_bare = mobile_login(emulator, user.email, PASSWORD)
    cloudflare = mobile_login(emulator, user.email, PASSWORD)
    captcha = mobile_login(emulator, user.email, PASSWORD)
    fine = mobile_login(emulator, user.email, PASSWORD)

    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7200")
    assert limited_bare.status_code == 429
    assert "Retry-After" not in limited_bare.headers
    assert cloudflare.status_code == 403
    assert cloudflare.headers["Content-Type"].startswith("text/html")
    assert "Cloudflare" in cloudflare.text
    assert captcha.status_code == 200
    assert captcha.json()["responseStatus"]["type"] == "CAPTCHA_REQUIRED"
    assert fine.json()["responseStatus"]["type"] == "SUCCESSFUL"
    assert emulator.request_count(LOGIN_PATH) == 5
    with pytest.raises(ValueError, match="unknown block kind"):
        emulator.block_logins("politely")


def test_login_needs_its_query_and_a_json_body(emulator: GarminEmulator) -> None:
    no_service = requests.post(
        f"{emulator.url}{LOGIN_PATH}",
        params={"clientId": "GCM_IOS_DARK"},
        json={"username": "a@example.com", "password": "x"},
        timeout=TIMEOUT,
    )
    not_json = requests.post(
        f"{emulator.url}{LOGIN_PATH}", params=sso_params(), data=b"{oops", timeout=TIMEOUT
    )

    assert no_service.status_code == 400
    assert not_json.status_code == 400
