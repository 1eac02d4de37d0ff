"""Sign-ins are limited per Garmin account, not only per user id: Garmin locks an account (its
email) that signs in too often and reports its sign-in 429s per account, whichever of our user
ids it is signed in for. Before, the login limit and the sign-in cooldown were kept per user
id, so two user ids an application gave the same Garmin login each had their own: twice the
logins Garmin allows, and a second user id's Login sent straight back into the 429.

README, Configuration: GARMIN_AUTH_LOGIN_LIMIT "logins per user (and per Garmin account) per
window"; "How we treat Garmin's limits": a sign-in 429 holds back the account's sign-ins.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import grpc
import pytest
from sqlalchemy import create_engine, select

from auth_service.crypto import Keyring
from auth_service.domain.policies import LoginSettings
from auth_service.domain.signin_accounts import SignInAccounts
from auth_service.storage.models import GarminMfaChallenge, GarminSignInAccount
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import BLOCK_RATE_LIMITED, LOGIN_PATH, VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

EMAIL = "shared@example.com"
LIMIT = LoginSettings(limit=2, window_seconds=3600)


def test_the_login_limit_counts_every_user_id_of_one_account_on_every_replica(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    first, second = service_factory.start(login=LIMIT), service_factory.start(login=LIMIT)
    garmin.add_user(EMAIL, PASSWORD)
    assert login(first, "ann", EMAIL).outcome == pb.LOGIN_OUTCOME_AUTHENTICATED
    assert login(second, "ann-again", EMAIL).outcome == pb.LOGIN_OUTCOME_AUTHENTICATED

    before = garmin.request_count(LOGIN_PATH)
    # A third user id, and the address in other letters: the same Garmin account.
    limited = expect_failure(lambda: login(first, "ann-third", "Shared@Example.COM"))
    reached = garmin.request_count(LOGIN_PATH) - before
    assert (limited.code, limited.reason, reached) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LOGIN_RATE_LIMITED",
        0,
    ), f"the account's third login in the window answered {limited.reason}, {reached} at Garmin"
    assert "Garmin account" in limited.message
    assert limited.retry_seconds is not None
    assert 3500 < limited.retry_seconds <= 3600

    # A refusal counts nothing: the third user id's own count is untouched, and another
    # account signs in as before.
    garmin.add_user("other@example.com", PASSWORD)
    answer = login(second, "ann-third", "other@example.com")
    assert answer.outcome == pb.LOGIN_OUTCOME_AUTHENTICATED


def test_a_sign_in_429_holds_back_every_user_id_of_the_account(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    first, second = service_factory.start(), service_factory.start()
    garmin.add_user(EMAIL, PASSWORD)
    garmin.add_user("other@example.com", PASSWORD)

    garmin.block_logins(BLOCK_RATE_LIMITED)
    limited = expect_failure(lambda: login(first, "ann", EMAIL))
    assert limited.reason == "GARMIN_RATE_LIMITED"

    before = garmin.request_count(LOGIN_PATH)
    held = expect_failure(lambda: login(second, "ann-again", EMAIL.upper()))
    reached = garmin.request_count(LOGIN_PATH) - before
    assert (held.reason, reached) == ("GARMIN_RATE_LIMITED", 0), (
        f"a second user id of the account Garmin answered 429 got {held.reason}, "
        f"{reached} call at Garmin"
    )
    assert held.retry_seconds is not None
    assert held.retry_seconds > 7000  # the sign-in cooldown's 2 hours, not a fresh default
    # Only that account waits: another signs in.
    assert login(second, "bo", "other@example.com").outcome == pb.LOGIN_OUTCOME_AUTHENTICATED


def test_a_pending_mfa_code_waits_out_its_accounts_cooldown(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start()
    garmin.add_user(EMAIL, PASSWORD, mfa=True, mfa_code="246810")
    pending = login(replica, "ann", EMAIL)
    assert pending.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED

    # Another user id signs in to the same account and Garmin answers 429.
    garmin.block_logins(BLOCK_RATE_LIMITED)
    assert expect_failure(lambda: login(replica, "ann-again", EMAIL)).reason == (
        "GARMIN_RATE_LIMITED"
    )

    before = garmin.request_count(VERIFY_MFA_PATH)
    held = expect_failure(
        lambda: replica.call(
            "SubmitMfa",
            pb.SubmitMfaRequest(mfa_challenge_id=pending.mfa_challenge_id, code="246810"),
        )
    )
    reached = garmin.request_count(VERIFY_MFA_PATH) - before
    assert (held.reason, reached) == ("GARMIN_RATE_LIMITED", 0), (
        f"SubmitMfa during its account's sign-in cooldown got {held.reason}, "
        f"{reached} call at Garmin"
    )


def test_the_database_keeps_a_keyed_digest_of_the_account_never_its_email(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    replica = service_factory.start(login=LIMIT)
    garmin.add_user(EMAIL, PASSWORD, mfa=True, mfa_code="246810")
    login(replica, "ann", EMAIL)

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            accounts = connection.execute(select(GarminSignInAccount.account_digest)).all()
            challenges = connection.execute(select(GarminMfaChallenge.account_digest)).all()
    finally:
        engine.dispose()
    assert len(accounts) == 1
    (digest,) = accounts[0]
    assert challenges == [(digest,)]
    assert EMAIL not in digest
    # Keyed: not the plain hash a list of addresses could be matched against.
    assert digest != hashlib.sha256(EMAIL.encode()).hexdigest()
    assert digest != SignInAccounts([b"k" * 32]).keys("ann", EMAIL).account


def test_the_account_keeps_its_limit_while_a_new_key_is_promoted(
    service_factory: ServiceFactory, garmin: GarminEmulator, keyring: Keyring
) -> None:
    """The README's rotation adds the new key everywhere, then promotes it replica by
    replica: meanwhile replicas disagree on the primary key, not on the ring."""
    old = keyring.keys[0][0]
    both = Keyring((*keyring.keys, *Keyring.parse(Keyring.generate_key_value("next")).keys))
    before = service_factory.start(login=LIMIT, keyring=replace(both, primary=old))
    promoted = service_factory.start(login=LIMIT, keyring=replace(both, primary="next"))
    garmin.add_user(EMAIL, PASSWORD)
    assert login(before, "ann", EMAIL).outcome == pb.LOGIN_OUTCOME_AUTHENTICATED
    assert login(promoted, "ann-again", EMAIL).outcome == pb.LOGIN_OUTCOME_AUTHENTICATED

    calls = garmin.request_count(LOGIN_PATH)
    for replica in (before, promoted):

        def third(replica: Replica = replica) -> None:
            login(replica, "ann-third", EMAIL)

        assert expect_failure(third).reason == "LOGIN_RATE_LIMITED", replica
    assert garmin.request_count(LOGIN_PATH) == calls
