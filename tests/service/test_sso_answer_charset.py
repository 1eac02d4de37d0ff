"""An SSO answer whose Content-Type names a charset Python does not know, with a body that is
not UTF-8, is judged by its status like any other (curl_cffi's Response.text falls back to a
strict utf-8 decode there, which raised: the sign-in answered INTERNAL).

README "What each Garmin answer leads to": an HTML page (on any status), a 403, 5xx or an
answer we cannot read -> UNAVAILABLE GARMIN_UNAVAILABLE; a 429 on login -> RESOURCE_EXHAUSTED
GARMIN_RATE_LIMITED and the account's sign-in cooldown starts. "Bad input never answers
INTERNAL." Before the fix the service answered INTERNAL, and the 429 started no cooldown: the
next Login went to Garmin again.
"""

from __future__ import annotations

import grpc
import pytest

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, LOGIN_PATH, GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure, failure_of
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

# A blocked-page body in Latin-1 ("é" is 0xE9), labelled with a charset codecs cannot look up
# (MySQL's name for UTF-8; pages served from such stacks carry it).
PAGE = "<html><body>Acc\u00e8s refus\u00e9</body></html>".encode("latin-1")
UNKNOWN_CHARSET = "text/html; charset=utf8mb4"


def test_a_blocked_page_in_an_unknown_charset_is_garmin_unavailable(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("cs@example.com", PASSWORD)
    garmin.fail_next(LOGIN_PATH, 403, body=PAGE, content_type=UNKNOWN_CHARSET)

    refused = expect_failure(lambda: login(replica, "cs", "cs@example.com"))

    assert (refused.code, refused.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "GARMIN_UNAVAILABLE",
    ), f"answered {refused.code} {refused.reason}: {refused.message}"


def test_a_429_page_in_an_unknown_charset_starts_the_cooldown(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("cs429@example.com", PASSWORD)
    garmin.fail_next(LOGIN_PATH, 429, retry_after=600, body=PAGE, content_type=UNKNOWN_CHARSET)

    limited = expect_failure(lambda: login(replica, "cs429", "cs429@example.com"))

    # The account's sign-in cooldown must hold the next Login back without calling Garmin.
    before = garmin.request_count(LOGIN_PATH)
    try:
        again = pb.LoginOutcome.Name(login(replica, "cs429", "cs429@example.com").outcome)
    except grpc.RpcError as error:
        again = failure_of(error).reason
    reached_garmin = garmin.request_count(LOGIN_PATH) - before
    assert (limited.reason, again, reached_garmin) == (
        "GARMIN_RATE_LIMITED",
        "GARMIN_RATE_LIMITED",
        0,
    ), (
        f"Garmin's 429 was answered {limited.code.name} {limited.reason}; the next Login "
        f"reached Garmin ({reached_garmin} call) and answered {again}"
    )


DEEP = "[" * 100_000 + "]" * 100_000  # past the JSON parser's stack (about 1000 levels)


@pytest.mark.parametrize("flow", [LoginFlow.DI, LoginFlow.GARTH])
def test_an_sso_answer_nested_past_the_parsers_stack_is_garmin_unavailable(
    service_factory: ServiceFactory, garmin: GarminEmulator, flow: LoginFlow
) -> None:
    """json.loads raises RecursionError, no ValueError, for such an answer: before, the DI
    sign-in answered INTERNAL."""
    replica = service_factory.start(login_flow=flow)
    garmin.add_user("deep@example.com", PASSWORD)
    garmin.fail_next(LOGIN_PATH, 200, body=DEEP, content_type="application/json")

    refused = expect_failure(lambda: login(replica, "deep", "deep@example.com"))

    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE")


def test_a_token_answer_nested_past_the_parsers_stack_is_garmin_unavailable(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """The DI ticket exchange's answer, likewise (it answered INTERNAL)."""
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("deep-token@example.com", PASSWORD)
    garmin.fail_next(DI_TOKEN_PATH, 200, body=DEEP, content_type="application/json")

    refused = expect_failure(lambda: login(replica, "deept", "deep-token@example.com"))

    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE")
