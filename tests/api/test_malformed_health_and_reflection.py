"""Bad input never answers INTERNAL (README, Errors). Request bytes that are not a well-formed
message answer INVALID_ARGUMENT on health and server reflection too, as on our own RPCs
(auth_service.api.decoding).

Before: both kept gRPC's own deserializer. An anonymous client sending a malformed
HealthCheckRequest on the main port got INTERNAL ("Exception deserializing request!"), and
grpc._common logged "Exception deserializing message!" at ERROR with a traceback for each
such call; server reflection (any authenticated caller) did the same. (From a read-only
review of bad input.)"""

from __future__ import annotations

import grpc
import pytest

from tests.fixtures.servers import ROLE_TOKENS, Replica, failure_of

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Field 1 (service, a string) holding bytes that are not UTF-8; and plain garbage.
MALFORMED = [b"\x0a\x02\xff\xfe", b"\xff\xff\xff"]


@pytest.mark.parametrize("payload", MALFORMED, ids=["invalid-utf8", "garbage"])
def test_a_malformed_health_check_is_not_answered_internal(
    service: Replica, payload: bytes
) -> None:
    call = service.channel.unary_unary(  # raw bytes, no credentials (health is public)
        HEALTH_CHECK, request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as raised:
        call(payload, timeout=10)
    failure = failure_of(raised.value)
    assert failure.code is not grpc.StatusCode.INTERNAL, (failure.code, failure.message)
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT, (failure.code, failure.message)


REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def test_a_malformed_reflection_request_is_not_answered_internal(service: Replica) -> None:
    """The same for server reflection (an authenticated caller of any role)."""
    call = service.channel.stream_stream(
        REFLECTION, request_serializer=None, response_deserializer=None
    )
    metadata = (("authorization", f"Bearer {ROLE_TOKENS['viewer']}"),)
    with pytest.raises(grpc.RpcError) as raised:
        list(call(iter([MALFORMED[0]]), metadata=metadata, timeout=10))
    failure = failure_of(raised.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
