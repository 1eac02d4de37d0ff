"""Any Garmin 429 met in a sign-in holds back every user id of the Garmin account (its email),
on every replica, for at least the wait Garmin asked for. Rule: sign-ins are limited per
Garmin account, and a 429 seen by one replica stops the others from calling that account until
the wait is over.

Before, only the sign-in page's (SSO) 429 with GARMIN_AUTH_SIGNIN_COOLDOWN on started the
account's cooldown: a 429 from the DI token endpoint during a sign-in, or the SSO's with the
cooldown at 0, held back only the user id that met it (the gate keys its cooldowns by user
id), and a second user id of the same account signed in at once from another replica,
straight into Garmin's 429. Found by review (s27)."""

from __future__ import annotations

import pytest

from auth_service.domain.policies import LoginFlow, LoginSettings
from garmin_emulator import DI_TOKEN_PATH, LOGIN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

EMAIL = "shared@example.com"


def test_token_endpoint_429_in_a_sign_in_holds_back_the_accounts_other_user_ids(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    first = service_factory.start(login_flow=LoginFlow.DI)
    second = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user(EMAIL, PASSWORD)
    garmin.fail_next(DI_TOKEN_PATH, 429, retry_after=600)

    limited = expect_failure(lambda: login(first, "ann", EMAIL))
    assert limited.reason == "GARMIN_RATE_LIMITED"
    # The same user id waits it out (the gate's cooldown of "ann"):
    held = expect_failure(lambda: login(second, "ann", EMAIL))
    assert held.reason == "GARMIN_RATE_LIMITED"

    before_sso = garmin.request_count(LOGIN_PATH)
    before_token = garmin.request_count(DI_TOKEN_PATH)
    outcome: object = None
    try:
        outcome = login(second, "ann-again", EMAIL).outcome
    except Exception as exc:  # noqa: BLE001
        outcome = exc
    reached_sso = garmin.request_count(LOGIN_PATH) - before_sso
    reached_token = garmin.request_count(DI_TOKEN_PATH) - before_token
    assert (reached_sso, reached_token) == (0, 0), (
        f"another user id of the account Garmin answered 429 for 600 s signed in again at once "
        f"({reached_sso} SSO login, {reached_token} token call; outcome {outcome})"
    )


def test_with_the_signin_cooldown_off_an_sso_429_still_holds_back_the_accounts_other_user_ids(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """GARMIN_AUTH_SIGNIN_COOLDOWN=0 turns off the 2-hour sign-in cooldown ("Garmin's answer
    as it is"), but Garmin's own Retry-After must still be honoured for the account: the
    gate's cooldown is keyed by user id only, so another user id of the same Garmin account
    logs in straight into the 429."""
    login_settings = LoginSettings(limit=20, window_seconds=3600, signin_cooldown_seconds=0)
    first = service_factory.start(login_flow=LoginFlow.DI, login=login_settings)
    second = service_factory.start(login_flow=LoginFlow.DI, login=login_settings)
    garmin.add_user(EMAIL, PASSWORD)
    garmin.fail_next(LOGIN_PATH, 429, retry_after=600)

    limited = expect_failure(lambda: login(first, "ann", EMAIL))
    assert limited.reason == "GARMIN_RATE_LIMITED"
    held = expect_failure(lambda: login(second, "ann", EMAIL))
    assert held.reason == "GARMIN_RATE_LIMITED"  # the same user id waits

    before = garmin.request_count(LOGIN_PATH)
    outcome: object = None
    try:
        outcome = login(second, "ann-again", EMAIL).outcome
    except Exception as exc:  # noqa: BLE001
        outcome = exc
    reached = garmin.request_count(LOGIN_PATH) - before
    assert reached == 0, (
        f"another user id of the account Garmin's SSO answered 429 (Retry-After 600) logged "
        f"in at once: {reached} SSO login (outcome {outcome})"
    )
