"""An absurdly long Retry-After (one that does not fit a float: ``1e999``, or 400 digits) holds
the account back for GARMIN_AUTH_RATE_LIMIT_MAX_WAIT (an hour), as a merely huge one
(``1e300``) does. README: "until Garmin's Retry-After has passed (...; never longer than
GARMIN_AUTH_RATE_LIMIT_MAX_WAIT)".

Before, garmin_client.answers.retry_after_seconds dropped a non-finite number as "no
Retry-After" (None), and the default wait (60 s) applied: the longer Garmin asked us to wait,
the shorter we waited (the worker likewise). Found by a read-only review."""

from __future__ import annotations

from datetime import timedelta

import pytest

from auth_service.domain.errors import GarminRateLimited
from auth_service.domain.garmin_limits import GarminLimitSettings
from garmin_emulator import DI_TOKEN_PATH, GarminEmulator
from tests.limits.conftest import MakeReplicas
from tests.refresh import DiAccounts

pytestmark = pytest.mark.timeout(60)

USER = "ursula"
LIMITS = GarminLimitSettings()  # 60 s default, 3600 s cap


@pytest.mark.parametrize("retry_after", ["1e300", "1e999", "9" * 400])
def test_an_absurd_retry_after_is_capped_not_defaulted(
    make_replicas: MakeReplicas, di_accounts: DiAccounts, emulator: GarminEmulator, retry_after: str
) -> None:
    first, _second = make_replicas(LIMITS)
    di_accounts.seed(USER, access_in=timedelta(seconds=-5))
    emulator.fail_next(DI_TOKEN_PATH, 429, retry_after=retry_after)

    with pytest.raises(GarminRateLimited) as raised:
        first.use_cases.leases.lease_session(USER, "worker", None)

    wait = raised.value.retry_after_seconds
    assert wait == LIMITS.max_wait_seconds, (
        f"Retry-After {retry_after[:12]!r}: the account is held back {wait} s, not the "
        f"{LIMITS.max_wait_seconds:.0f} s cap"
    )
