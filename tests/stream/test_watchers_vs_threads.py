"""Watchers can never take the threads the unary RPCs need. Each WatchSessionEvents stream
holds one of the replica's gRPC threads for its life, so GARMIN_AUTH_MAX_WATCHERS is at most
half of them. Before, it was accepted up to 1000: with 32 (the pool's size) open watchers took
every thread, and LeaseSession, GetStatus and the rest queued until their deadline (32 watchers
open: GetStatus answered DEADLINE_EXCEEDED), while further watchers hung instead of being
refused TOO_MANY_WATCHERS."""

from __future__ import annotations

import grpc
import pytest

from auth_service.domain.changes import StreamSettings
from auth_service.serving_config import MAX_WATCHERS_LIMIT, RPC_THREADS
from auth_service.stream_config import read_stream_settings
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.env import ConfigError, EnvReader
from tests.fixtures.servers import ServiceFactory, failure_of
from tests.stream import Follower, bearer, watch


def _read(max_watchers: int) -> StreamSettings:
    return read_stream_settings(
        EnvReader({"GARMIN_AUTH_MAX_WATCHERS": str(max_watchers)}, "GARMIN_AUTH_")
    )


def test_a_limit_over_half_the_threads_is_refused_naming_it() -> None:
    assert _read(MAX_WATCHERS_LIMIT).max_watchers == MAX_WATCHERS_LIMIT
    with pytest.raises(ConfigError, match="GARMIN_AUTH_MAX_WATCHERS"):
        _read(MAX_WATCHERS_LIMIT + 1)
    with pytest.raises(ConfigError, match="GARMIN_AUTH_MAX_WATCHERS"):
        _read(RPC_THREADS)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_unary_rpcs_are_served_with_every_watcher_slot_taken(
    service_factory: ServiceFactory,
) -> None:
    stream = StreamSettings(
        max_watchers=MAX_WATCHERS_LIMIT,
        heartbeat_seconds=30,
        poll_seconds=2,
        send_timeout_seconds=30,
    )
    replica = service_factory.start(stream=stream)
    followers = [Follower(watch(replica.stub)).start() for _ in range(MAX_WATCHERS_LIMIT)]
    try:
        for follower in followers:
            follower.wait_heartbeat(timeout=30)
        # One more watcher is refused, not left hanging ...
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(watch(replica.stub)))
        assert failure_of(raised.value).reason == "TOO_MANY_WATCHERS"
        # ... and an admin's unary call is served at once.
        answer = replica.stub.GetStatus(
            pb.GetStatusRequest(user_id="alice"), metadata=bearer("admin"), timeout=5
        )
        assert answer.status.user_id == "alice"
    finally:
        for follower in followers:
            follower.cancel()
