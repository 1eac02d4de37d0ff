""" "." and ".." are no user ids (issue 14): they fit the character rule but name the current and
the parent directory wherever an id becomes a path (the worker's directory sink), so every RPC
that takes a user id refuses them with INVALID_ARGUMENT, before anything is stored or sent."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.user_ids import USER_ID_RULE, is_user_id
from garmin_emulator import GarminEmulator
from tests.audit import PASSWORD, read_events
from tests.fixtures.servers import Replica, expect_failure


def _requests(user_id: str) -> list[tuple[str, Any, str]]:
    return [
        (
            "Login",
            pb.LoginRequest(user_id=user_id, email="dot@example.com", password=PASSWORD),
            "admin",
        ),
        ("GetStatus", pb.GetStatusRequest(user_id=user_id), "viewer"),
        ("DeleteSession", pb.DeleteSessionRequest(user_id=user_id), "admin"),
        ("LeaseSession", pb.LeaseSessionRequest(user_id=user_id, holder="w"), "worker"),
        ("ListAuditEvents", pb.ListAuditEventsRequest(user_id=user_id), "viewer"),
    ]


@pytest.mark.parametrize("user_id", [".", ".."])
def test_dot_and_dot_dot_are_refused_everywhere(
    service: Replica, garmin: GarminEmulator, database_url: str, user_id: str
) -> None:
    garmin.add_user("dot@example.com", PASSWORD)
    before = garmin.request_count()
    for rpc, request, role in _requests(user_id):
        refused = expect_failure(lambda: service.call(rpc, request, role=role))  # noqa: B023
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ), rpc
        assert refused.field_violations == ["user_id"], rpc
        assert USER_ID_RULE in refused.message
    assert garmin.request_count() == before
    assert read_events(database_url) == []


def test_ids_that_merely_contain_dots_stay_valid() -> None:
    assert not is_user_id(".")
    assert not is_user_id("..")
    assert all(is_user_id(value) for value in ("...", ".alice", "a.b", "..bob", "carol."))
