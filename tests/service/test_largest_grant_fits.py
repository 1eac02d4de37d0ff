"""The largest session the service accepts can be leased by worker_full under the smallest
GARMIN_AUTH_MAX_MESSAGE_BYTES it accepts (the setting bounds answers as well as requests).

Before, the setting went down to 64 KiB: a session whose import fitted (61 KB) had a
worker_full grant of 70 KB, which committed and was then refused by gRPC (RESOURCE_EXHAUSTED,
no details), leaving the lease held until its TTL by nobody who knew its id; every later grant
of that user failed the same way. Found by a read-only review."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from auth_service.config import MIN_MESSAGE_BYTES, load_settings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.env import ConfigError
from garmin_client.session_proto import tokens_to_proto
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory, failure_of
from tests.service.test_cli import base_env
from tests.service.test_status_import_delete import garmin_tokens

LIMIT = MIN_MESSAGE_BYTES  # the smallest GARMIN_AUTH_MAX_MESSAGE_BYTES the config accepts


def test_an_accepted_session_can_be_leased_by_worker_full(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    service = service_factory.start(max_message_bytes=LIMIT)
    tokens = garmin_tokens(service, garmin, "big@example.com")
    assert tokens.oauth1 is not None
    # Every text at the per-field limits of domain.validation (8192 characters; scope and jti
    # printable, so 4 bytes each in UTF-8).
    big = replace(
        tokens,
        oauth1=replace(
            tokens.oauth1,
            oauth_token="t" * 8192,
            oauth_token_secret="s" * 8192,
            mfa_token="m" * 8192,
        ),
        oauth2=replace(
            tokens.oauth2,
            scope="\U0001f600" * 8192,
            jti="\U0001f600" * 8192,
            access_token="a" * 8192,
            refresh_token="r" * 8192,
        ),
    )
    request = pb.ImportSessionRequest(user_id="alice", session=tokens_to_proto(big))
    assert request.ByteSize() < LIMIT
    service.call("ImportSession", request)  # accepted: the request fits

    try:
        grant = service.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id="alice", holder="h"), role="worker_full"
        )
    except grpc.RpcError as error:
        answered = failure_of(error)
        status = service.call("GetStatus", pb.GetStatusRequest(user_id="alice")).status
        assert not status.HasField("lease"), (
            f"LeaseSession answered {answered.code.name} {answered.message!r} (no ErrorInfo), "
            f"yet the grant was committed: lease {status.lease.lease_ref} "
            f"(fencing token {status.lease.fencing_token}) is held until its TTL ends by a "
            "worker that never received its id; every later grant of this session fails the "
            "same way"
        )
        raise AssertionError(
            f"an imported session cannot be leased by worker_full: {answered.code.name} "
            f"{answered.message!r}"
        ) from None
    assert grant.lease.lease_id


def test_a_message_limit_below_the_largest_answer_is_refused(tmp_path: Path) -> None:
    env = base_env(tmp_path, GARMIN_AUTH_MAX_MESSAGE_BYTES=str(MIN_MESSAGE_BYTES - 1))
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    assert refused.value.variable == "GARMIN_AUTH_MAX_MESSAGE_BYTES"
