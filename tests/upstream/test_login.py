"""login() and resume_mfa() through garth's real SSO code against the emulator."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta

# Real garth, to prove interop; conftest's adapter import already loaded it with GARTH_*
# hidden.
import garth
import pytest

from auth_service.domain.errors import (
    GarminCredentialsRejected,
    GarminRateLimited,
    GarminUnavailable,
    MfaChallengeNotFound,
    MfaCodeRejected,
)
from auth_service.domain.models import LoginNeedsMfa, LoginSucceeded, PendingMfa
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_emulator import (
    BLOCK_CAPTCHA,
    EXCHANGE_PATH,
    LOGIN_PATH,
    PREAUTHORIZED_PATH,
    SIGN_IN_PATH,
    VERIFY_MFA_PATH,
    EmulatedUser,
    GarminEmulator,
)

from .conftest import CONSUMER_KEY, PASSWORD, make_settings

pytestmark = pytest.mark.timeout(30)


def start_mfa_login(upstream: GarthUpstream, user: EmulatedUser) -> PendingMfa:
    result = upstream.login(user.email, user.password)
    assert isinstance(result, LoginNeedsMfa)
    return result.pending


def test_login_without_mfa_returns_tokens(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser
) -> None:
    before = datetime.now(UTC)

    result = upstream.login(user.email, PASSWORD)

    assert isinstance(result, LoginSucceeded)
    tokens = result.tokens
    assert tokens.domain == "garmin.com"
    assert tokens.oauth1_token().oauth_token
    assert tokens.oauth1_token().oauth_token_secret
    assert tokens.oauth1_token().mfa_token is None
    assert tokens.oauth2.token_type == "Bearer"
    expected_expiry = before + timedelta(seconds=emulator.access_token_expires_in)
    assert abs((tokens.oauth2.expires_at - expected_expiry).total_seconds()) < 5
    assert tokens.oauth2.expires_at.tzinfo is not None
    assert emulator.exchange_count(user.email) == 1


def test_consumer_comes_from_settings_never_from_a_download(
    upstream: GarthUpstream,
    emulator: GarminEmulator,
    user: EmulatedUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Even if something emptied garth's global (which triggers its S3 download), the
    # adapter puts its own back before calling garth.
    monkeypatch.setattr(garth.sso, "OAUTH_CONSUMER", {})

    upstream.login(user.email, PASSWORD)

    # preauthorized + exchange, both signed with our key and both accepted.
    assert emulator.consumer_keys_seen == [CONSUMER_KEY, CONSUMER_KEY]
    assert emulator.signature_failures == 0


def test_wrong_password_is_credentials_rejected(
    upstream: GarthUpstream, user: EmulatedUser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "hunter2-not-the-password"

    with pytest.raises(GarminCredentialsRejected) as caught:
        upstream.login(user.email, secret)

    assert secret not in str(caught.value)
    assert secret not in caplog.text
    # Raised "from None": garth's exception (with its URLs) is not chained into tracebacks.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_unknown_account_is_credentials_rejected(upstream: GarthUpstream) -> None:
    with pytest.raises(GarminCredentialsRejected):
        upstream.login("nobody@example.com", PASSWORD)


def test_sso_refusal_type_in_a_200_is_credentials_rejected(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser
) -> None:
    emulator.fail_next(
        LOGIN_PATH, 200, body='{"responseStatus": {"type": "ACCOUNT_LOCKED", "message": "x"}}'
    )

    with pytest.raises(GarminCredentialsRejected, match="ACCOUNT_LOCKED"):
        upstream.login(user.email, PASSWORD)


@pytest.mark.parametrize(
    ("path", "status", "body", "error"),
    [
        (LOGIN_PATH, 429, None, GarminRateLimited),
        (SIGN_IN_PATH, 429, None, GarminRateLimited),
        (LOGIN_PATH, 500, None, GarminUnavailable),
        (LOGIN_PATH, 403, "<html>Attention Required! | Cloudflare</html>", GarminUnavailable),
        (LOGIN_PATH, 200, "<html>Just a moment...</html>", GarminUnavailable),
        (LOGIN_PATH, 200, '{"responseStatus": ', GarminUnavailable),
        (LOGIN_PATH, 200, '{"no": "status"}', GarminUnavailable),
        (LOGIN_PATH, 200, '{"responseStatus": {"type": "SUCCESSFUL"}}', GarminUnavailable),
        (LOGIN_PATH, 200, "[1, 2]", GarminUnavailable),
        (PREAUTHORIZED_PATH, 401, None, GarminUnavailable),
        (PREAUTHORIZED_PATH, 200, "<html></html>", GarminUnavailable),
        (EXCHANGE_PATH, 401, None, GarminUnavailable),
        (EXCHANGE_PATH, 429, None, GarminRateLimited),
    ],
)
def test_login_failures_are_classified(
    upstream: GarthUpstream,
    emulator: GarminEmulator,
    user: EmulatedUser,
    path: str,
    status: int,
    body: str | None,
    error: type[Exception],
) -> None:
    # Retries on GET 5xx would hide a single failure: make it stick.
    emulator.fail_next(path, status, count=5, body=body)

    with pytest.raises(error):
        upstream.login(user.email, PASSWORD)


def test_login_connection_reset_and_timeout_are_unavailable(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    upstream = GarthUpstream(make_settings(emulator, timeout_seconds=0.5, retries=0))
    emulator.fail_next(LOGIN_PATH, "reset")
    with pytest.raises(GarminUnavailable, match="could not be reached"):
        upstream.login(user.email, PASSWORD)

    emulator.fail_next(LOGIN_PATH, "hang", delay=3)
    with pytest.raises(GarminUnavailable, match="in time"):
        upstream.login(user.email, PASSWORD)


def test_mfa_login_then_right_code_returns_tokens(
    upstream: GarthUpstream, emulator: GarminEmulator, mfa_user: EmulatedUser
) -> None:
    pending = start_mfa_login(upstream, mfa_user)

    tokens = upstream.resume_mfa(pending, mfa_user.mfa_code)

    assert pending.mfa_method == "email"
    assert pending.domain == "garmin.com"
    assert pending.login_params["clientId"] == "GCM_ANDROID_DARK"
    assert [c["name"] for c in pending.cookies] == ["GARMIN-SSO-CUST-GUID"]
    assert pending.cookies[0]["domain"] == "sso.garmin.com"
    assert tokens.oauth1_token().mfa_token is not None
    mfa_expires_at = tokens.oauth1_token().mfa_expires_at
    assert mfa_expires_at is not None
    assert mfa_expires_at.tzinfo is not None
    assert emulator.exchange_count(mfa_user.email) == 1


def test_wrong_mfa_code_is_rejected_then_the_right_one_works(
    upstream: GarthUpstream, mfa_user: EmulatedUser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pending = start_mfa_login(upstream, mfa_user)

    with pytest.raises(MfaCodeRejected) as caught:
        upstream.resume_mfa(pending, "000000")
    tokens = upstream.resume_mfa(pending, mfa_user.mfa_code)

    assert "INVALID_MFA_CODE" in str(caught.value)
    assert tokens.oauth1_token().mfa_token is not None
    assert mfa_user.password not in caplog.text


def test_mfa_code_with_another_logins_cookies_fails(
    upstream: GarthUpstream, emulator: GarminEmulator, mfa_user: EmulatedUser
) -> None:
    other = emulator.add_user("other@example.com", "pw-2", mfa=True, mfa_code="135790")
    mine = start_mfa_login(upstream, mfa_user)
    theirs = start_mfa_login(upstream, other)
    swapped = dataclasses.replace(mine, cookies=theirs.cookies)
    no_cookies = dataclasses.replace(mine, cookies=[])

    # Another login's cookies: that login's code is asked for, and this one is wrong there.
    with pytest.raises(MfaCodeRejected):
        upstream.resume_mfa(swapped, mfa_user.mfa_code)
    # No pending login for no cookies (401): log in again, as in the DI flow.
    with pytest.raises(MfaChallengeNotFound):
        upstream.resume_mfa(no_cookies, mfa_user.mfa_code)
    # The right cookies still work: the challenge was not consumed by the failures.
    assert upstream.resume_mfa(mine, mfa_user.mfa_code).oauth1_token().mfa_token


def test_mfa_code_is_single_use(upstream: GarthUpstream, mfa_user: EmulatedUser) -> None:
    pending = start_mfa_login(upstream, mfa_user)
    upstream.resume_mfa(pending, mfa_user.mfa_code)

    # The pending login is used up at Garmin (401): log in again.
    with pytest.raises(MfaChallengeNotFound):
        upstream.resume_mfa(pending, mfa_user.mfa_code)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (429, None, GarminRateLimited),
        (500, None, GarminUnavailable),
        # A refusal is told by the answer's type, not by its status (tests/upstream/
        # test_sso_answers.py): a bare 400 refuses nothing.
        (400, '{"responseStatus": {"type": "INVALID_MFA_CODE"}}', MfaCodeRejected),
        (400, None, GarminUnavailable),
    ],
)
def test_verify_code_failures_are_classified(
    upstream: GarthUpstream,
    emulator: GarminEmulator,
    mfa_user: EmulatedUser,
    status: int,
    body: str | None,
    error: type[Exception],
) -> None:
    pending = start_mfa_login(upstream, mfa_user)
    emulator.fail_next(
        VERIFY_MFA_PATH, status, body=body, retry_after=30 if status == 429 else None
    )

    with pytest.raises(error):
        upstream.resume_mfa(pending, mfa_user.mfa_code)
    # POSTs are never retried.
    assert emulator.request_count(VERIFY_MFA_PATH) == 1


def test_wrong_consumer_secret_is_refused_by_the_emulator(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    upstream = GarthUpstream(make_settings(emulator, consumer_secret="wrong-consumer-secret"))

    # A 401 on the ticket exchange is not the user's fault: not "credentials rejected".
    with pytest.raises(GarminUnavailable):
        upstream.login(user.email, PASSWORD)

    assert emulator.signature_failures == 1
    assert emulator.consumer_keys_seen == [CONSUMER_KEY]


def test_a_captcha_block_is_unavailable_not_a_wrong_password(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser
) -> None:
    """CAPTCHA_REQUIRED means Garmin's edge blocks this server (shared facts file), as the DI
    provider reads it. Before: GarminCredentialsRejected, telling the user their correct
    password was wrong (and, as a real answer, closing an open SSO breaker)."""
    emulator.block_logins(BLOCK_CAPTCHA)
    with pytest.raises(GarminUnavailable, match="CAPTCHA_REQUIRED"):
        upstream.login(user.email, PASSWORD)
