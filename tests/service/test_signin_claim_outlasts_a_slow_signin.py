"""A Login's hold on the Garmin account (the per-account sign-in claim and the gate's
exclusive claim of the user) lasts as long as the sign-in may be with Garmin.

Before, both lasted GarminLimitSettings.probe_seconds (60 s) whatever the upstream timeout,
though the README says the sign-in claims are sized on GARMIN_AUTH_UPSTREAM_TIMEOUT. With a
30 s timeout (accepted up to 300) one Login may take minutes: when Garmin sat on the first
Login's SSO POST past 60 s, a second Login of the same account on another replica reached
Garmin's SSO beside it (Garmin locks accounts that sign in too often). Now the hold is the
sign-in's calls at their worst (config.signin_claim_seconds), never under the probe timeout.
The service clock (shared FakeClock) is moved on while Garmin holds the first login, as
tests/service/test_mfa_claim_outlived.py does for SubmitMfa. Found by review (s27)."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime

import grpc
import pytest

from auth_service.domain.clock import FakeClock
from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import LOGIN_PATH, GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory, failure_of
from tests.service.test_login import PASSWORD

pytestmark = pytest.mark.timeout(120)

EMAIL = "slow@example.com"


def _login(replica: Replica, user_id: str, out: list[str]) -> None:
    try:
        replica.call(
            "Login", pb.LoginRequest(user_id=user_id, email=EMAIL, password=PASSWORD), timeout=60
        )
        out.append("OK")
    except grpc.RpcError as error:
        out.append(failure_of(error).reason)


def test_second_login_of_one_account_waits_while_the_first_is_with_garmin(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    base = service_factory.base_settings
    upstream = dataclasses.replace(base.upstream, timeout_seconds=30.0)
    first, second = (
        service_factory.start(login_flow=LoginFlow.DI, clock=clock, upstream=upstream)
        for _ in range(2)
    )
    garmin.add_user(EMAIL, PASSWORD)

    garmin.fail_next(LOGIN_PATH, None, delay=3.0)  # Garmin sits on the first login
    slow: list[str] = []
    thread = threading.Thread(target=_login, args=(first, "slow-user", slow))
    thread.start()
    deadline = time.monotonic() + 10
    while garmin.request_count(LOGIN_PATH) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    clock.advance(61)  # within the 30 s x ... budget of one Login, per the README

    again: list[str] = []
    _login(second, "slow-user", again)
    thread.join()

    assert garmin.request_count(LOGIN_PATH) == 1, (
        f"a second Login of the account reached Garmin while the first was still there "
        f"(peak in flight {garmin.peak_in_flight(LOGIN_PATH)}); answers {slow} {again}"
    )
