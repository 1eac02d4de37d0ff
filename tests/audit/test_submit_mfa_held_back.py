"""README "Audit trail": "a Login or SubmitMfa held back by Garmin's limits
(GARMIN_RATE_LIMITED: the account's sign-in cooldown, its back-off or an open breaker)" is
recorded. A SubmitMfa held back by an open breaker or the account's back-off is refused by
the gate after the challenge was claimed; before, nothing was recorded for it."""

from __future__ import annotations

from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.policies import LoginSettings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import LOGIN_PATH, GarminEmulator
from tests.audit import PASSWORD
from tests.audit.trail_rows import events
from tests.fixtures.servers import ServiceFactory, expect_failure


def _login(service, user: str):  # type: ignore[no-untyped-def]
    return service.call(
        "Login", pb.LoginRequest(user_id=user, email=f"{user}@example.com", password=PASSWORD)
    )


def test_submit_mfa_held_back_by_an_open_breaker_is_recorded(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    service = service_factory.start(limits=GarminLimitSettings(breaker_threshold=1))
    garmin.add_user("mia@example.com", PASSWORD, mfa=True, mfa_code="135790")
    garmin.add_user("bob@example.com", PASSWORD)
    challenge = _login(service, "mia").mfa_challenge_id
    # Another account's sign-in meets Garmin's 429: the sign-in endpoint's breaker opens.
    garmin.fail_next(LOGIN_PATH, 429, retry_after=30)
    assert expect_failure(lambda: _login(service, "bob")).reason == "GARMIN_RATE_LIMITED"

    # A Login of mia now is held back by the breaker, and recorded (as the README says).
    assert expect_failure(lambda: _login(service, "mia")).reason == "GARMIN_RATE_LIMITED"
    assert events(database_url, "mia")[-1] == (
        "Login",
        "mia",
        "RESOURCE_EXHAUSTED",
        "GARMIN_RATE_LIMITED",
    )
    # Her SubmitMfa is held back by the same breaker: it must be recorded too.
    refused = expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="135790")
        )
    )
    assert refused.reason == "GARMIN_RATE_LIMITED"
    assert events(database_url, "mia")[-1] == (
        "SubmitMfa",
        "mia",
        "RESOURCE_EXHAUSTED",
        "GARMIN_RATE_LIMITED",
    ), events(database_url, "mia")


def test_submit_mfa_held_back_by_the_accounts_back_off_is_recorded(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    # Without the separate sign-in cooldown, only the gate's back-off holds the account.
    service = service_factory.start(login=LoginSettings(signin_cooldown_seconds=0))
    garmin.add_user("mia@example.com", PASSWORD, mfa=True, mfa_code="135790")
    challenge = _login(service, "mia").mfa_challenge_id
    garmin.fail_next(LOGIN_PATH, 429, retry_after=30)
    assert expect_failure(lambda: _login(service, "mia")).reason == "GARMIN_RATE_LIMITED"
    refused = expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="135790")
        )
    )
    assert refused.reason == "GARMIN_RATE_LIMITED"
    assert events(database_url, "mia")[-1] == (
        "SubmitMfa",
        "mia",
        "RESOURCE_EXHAUSTED",
        "GARMIN_RATE_LIMITED",
    ), events(database_url, "mia")
