"""Garmin misbehaving, seen through the service's gRPC API (tests/upstream checks how the
adapter classifies each fault; this checks what callers are answered and what is stored).

Every RPC that calls Garmin (Login, SubmitMfa, GetStatus with validate, LeaseSession's central
refresh) meets every fault: 429 with and without Retry-After, 500, 503, a reset connection,
an answer slower than the upstream timeout, malformed JSON and an HTML page where JSON was
expected. Each answers the documented code and reason (README, "Errors"), and the user's
working session is untouched: same state, same stored ciphertext, same version, no lease
left behind. Only a definite rejection may invalidate a session; none of these is one. Once
Garmin behaves again, the same call succeeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import grpc
import pytest

from auth_service.api.errors import DEFAULT_GARMIN_RETRY_SECONDS
from auth_service.crypto import Keyring
from auth_service.domain.models import SessionState
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.session_proto import tokens_to_proto
from garmin_emulator import (
    EXCHANGE_PATH,
    LOGIN_PATH,
    PROFILE_PATH,
    VERIFY_MFA_PATH,
    GarminEmulator,
)
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure

from . import PASSWORD, record_figures, stored_row

pytestmark = pytest.mark.timeout(60)

UPSTREAM_TIMEOUT = 1.0
USER = "gus"
EMAIL = "gus@example.com"
MFA_CODE = "314159"


@dataclasses.dataclass(frozen=True)
class Fault:
    status: int | str | None
    retry_after: int | None = None
    body: str | None = None
    content_type: str | None = None
    delay: float = 0.0
    # What the caller is answered.
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    reason: str = "GARMIN_UNAVAILABLE"
    retry_seconds: int | None = None


RATE_LIMITED = grpc.StatusCode.RESOURCE_EXHAUSTED
FAULTS = {
    "429-retry-after": Fault(
        429, retry_after=120, code=RATE_LIMITED, reason="GARMIN_RATE_LIMITED", retry_seconds=120
    ),
    "429": Fault(
        429,
        code=RATE_LIMITED,
        reason="GARMIN_RATE_LIMITED",
        retry_seconds=int(DEFAULT_GARMIN_RETRY_SECONDS),
    ),
    "500": Fault(500),
    "503": Fault(503),
    "reset": Fault("reset"),
    "slower-than-timeout": Fault(None, delay=UPSTREAM_TIMEOUT + 0.5),
    "malformed-json": Fault(
        200, body='{"responseStatus": {"type": ', content_type="application/json"
    ),
    "html-error-page": Fault(
        200,
        body="<!DOCTYPE html><html><head><title>Service Unavailable</title></head>"
        "<body><h1>We'll be right back</h1></body></html>",
    ),
}


@dataclasses.dataclass
class Prepared:
    keyring: Keyring
    database_url: str
    challenge_id: str = ""


@dataclasses.dataclass
class Scenario:
    """One RPC that calls Garmin: how to prepare the user, the path Garmin is hit on, the call,
    and a check that the call works once Garmin behaves."""

    path: str
    prepare: Callable[[Replica, GarminEmulator, Prepared], None]
    call: Callable[[Replica, Prepared], Any]


def login(replica: Replica) -> Any:
    return replica.call("Login", pb.LoginRequest(user_id=USER, email=EMAIL, password=PASSWORD))


def prepare_login(replica: Replica, garmin: GarminEmulator, prepared: Prepared) -> None:
    """An ACTIVE user logs in again."""


def prepare_submit_mfa(replica: Replica, garmin: GarminEmulator, prepared: Prepared) -> None:
    """An ACTIVE user logs in again and Garmin now asks for MFA: a challenge is pending while
    the working session stays in force."""
    garmin.add_user(EMAIL, PASSWORD, mfa=True, mfa_code=MFA_CODE)
    prepared.challenge_id = login(replica).mfa_challenge_id


def prepare_lease(replica: Replica, garmin: GarminEmulator, prepared: Prepared) -> None:
    """The stored access token has expired: a grant refreshes it at Garmin first."""
    row = stored_row(prepared.database_url, USER)
    assert row is not None
    assert row.session_ciphertext is not None
    tokens = SecretBox(prepared.keyring).open_tokens(
        USER, row.session_version, row.session_ciphertext
    )
    expired = tokens_to_proto(tokens)
    expired.oauth2.expires_at.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    replica.call("ImportSession", pb.ImportSessionRequest(user_id=USER, session=expired))


def nothing(replica: Replica, garmin: GarminEmulator, prepared: Prepared) -> None:
    """An ACTIVE user whose token is valid."""


def submit(replica: Replica, prepared: Prepared) -> Any:
    request = pb.SubmitMfaRequest(mfa_challenge_id=prepared.challenge_id, code=MFA_CODE)
    return replica.call("SubmitMfa", request)


SCENARIOS = {
    "Login": Scenario(LOGIN_PATH, prepare_login, lambda replica, _: login(replica)),
    "SubmitMfa": Scenario(VERIFY_MFA_PATH, prepare_submit_mfa, submit),
    "GetStatus-validate": Scenario(
        PROFILE_PATH,
        nothing,
        lambda replica, _: replica.call(
            "GetStatus", pb.GetStatusRequest(user_id=USER, validate=True)
        ),
    ),
    "LeaseSession-refresh": Scenario(
        EXCHANGE_PATH,
        prepare_lease,
        lambda replica, _: replica.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id=USER, holder="w"), role="worker"
        ),
    ),
}


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.mark.parametrize("fault_name", sorted(FAULTS))
@pytest.mark.parametrize("rpc", sorted(SCENARIOS))
def test_garmin_fault_answers_the_documented_error_and_invalidates_nothing(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    database_url: str,
    keyring: Keyring,
    rpc: str,
    fault_name: str,
) -> None:
    scenario, fault = SCENARIOS[rpc], FAULTS[fault_name]
    replica = service_factory.start(
        upstream=dataclasses.replace(
            service_factory.base_settings.upstream, timeout_seconds=UPSTREAM_TIMEOUT
        ),
        # Garmin's own answer, not the sign-in cooldown a 429 starts (tests/service/
        # test_di_signin.py covers that).
        login=dataclasses.replace(service_factory.base_settings.login, signin_cooldown_seconds=0),
    )
    garmin.add_user(EMAIL, PASSWORD)
    login(replica)
    prepared = Prepared(keyring, database_url)
    scenario.prepare(replica, garmin, prepared)
    before = stored_row(database_url, USER)
    assert before is not None
    assert before.state is SessionState.ACTIVE

    # Enough for every retry of an idempotent GET; what is left is cleared afterwards.
    garmin.fail_next(
        scenario.path,
        fault.status,
        count=5,
        retry_after=fault.retry_after,
        body=fault.body,
        content_type=fault.content_type,
        delay=fault.delay,
    )
    failure = expect_failure(lambda: scenario.call(replica, prepared))
    garmin.clear_faults()

    assert (failure.code, failure.reason) == (fault.code, fault.reason)
    assert failure.retry_seconds == fault.retry_seconds
    # Nothing of Garmin's trouble reaches the caller: no body, no HTML.
    assert "<" not in failure.message
    after = stored_row(database_url, USER)
    assert after is not None
    assert (after.state, after.invalidated_reason, after.invalidated_at) == (
        SessionState.ACTIVE,
        None,
        None,
    )
    assert after.session_ciphertext == before.session_ciphertext
    assert after.session_version == before.session_version
    status = replica.call("GetStatus", pb.GetStatusRequest(user_id=USER)).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert not status.HasField("lease")

    if fault.status == HTTPStatus.TOO_MANY_REQUESTS:
        # Garmin asked for a wait: the same call is answered without Garmin until it has
        # passed, on every replica (tests/limits checks that it works again afterwards).
        calls = garmin.request_count(scenario.path)
        waiting = expect_failure(lambda: scenario.call(replica, prepared))
        assert (waiting.code, waiting.reason) == (fault.code, fault.reason)
        assert 0 < (waiting.retry_seconds or 0) <= (fault.retry_seconds or 0)
        assert garmin.request_count(scenario.path) == calls
        return
    # Garmin behaves again: the same call works. A SubmitMfa whose answer was lost (slower
    # than the timeout, a connection reset after it was sent) may have been judged by Garmin:
    # the code counted and its challenge stays claimed meanwhile (MFA_CHALLENGE_BUSY; a slow
    # one was judged, which used the code up): that user logs in again.
    if rpc == "SubmitMfa" and (fault.delay or fault.status == "reset"):
        busy = expect_failure(lambda: scenario.call(replica, prepared))
        assert (busy.code, busy.reason) == (grpc.StatusCode.ABORTED, "MFA_CHALLENGE_BUSY")
        prepared.challenge_id = login(replica).mfa_challenge_id
    assert scenario.call(replica, prepared) is not None
    record_figures("test_garmin_faults", rpc=rpc, fault=fault_name, faults_injected=1)
