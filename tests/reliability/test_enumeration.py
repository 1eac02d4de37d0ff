"""Enumeration: guessing lease ids, challenge ids or user ids reveals nothing that a wrong
guess would not. For each kind of id, a random guess, a "near" guess (a real id with one
character changed) and every way a real id dies are answered identically: same code, same
ErrorInfo reason, same message, same details. Answers are compared in full.

Two replicas share the database; the second runs two hours ahead (its clock stands for the
time passing), so leases and challenges the first one issued are expired there.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica, RpcFailure, ServiceFactory, failure_of

from . import PASSWORD, SkewedClock, record_figures, session_proto

pytestmark = pytest.mark.timeout(60)

LATER = timedelta(hours=2)


@pytest.fixture
def backend() -> str:
    return "sqlite"


def near(real_id: str) -> str:
    """The same id with its last character changed: right format, right length."""
    return real_id[:-1] + ("A" if real_id[-1] != "A" else "B")


Answer = tuple[grpc.StatusCode, str, str, int | None, tuple[str, ...]]


def failure(call: Any) -> Answer:
    """Everything a refusal says: code, reason, message, retry delay, bad fields."""
    try:
        call()
    except grpc.RpcError as error:
        found: RpcFailure = failure_of(error)
        return (
            found.code,
            found.reason,
            found.message,
            found.retry_seconds,
            tuple(found.field_violations),
        )
    raise AssertionError("the call succeeded")


def login(replica: Replica, user: str, password: str = PASSWORD) -> Any:
    request = pb.LoginRequest(user_id=user, email=f"{user}@example.com", password=password)
    return replica.call("Login", request)


def lease(replica: Replica, user: str, holder: str, ttl: int = 60) -> pb.Lease:
    request = pb.LeaseSessionRequest(user_id=user, holder=holder)
    request.ttl.seconds = ttl
    answer: pb.LeaseSessionResponse = replica.call("LeaseSession", request, role="worker_full")
    return answer.lease


def import_session(replica: Replica, user: str) -> None:
    replica.call(
        "ImportSession", pb.ImportSessionRequest(user_id=user, session=session_proto(user))
    )


@pytest.fixture
def replicas(service_factory: ServiceFactory) -> tuple[Replica, Replica]:
    return service_factory.start(), service_factory.start(clock=SkewedClock(LATER))


def test_dead_and_guessed_lease_ids_are_answered_alike(replicas: tuple[Replica, Replica]) -> None:
    now, later = replicas
    for user in ("u-expired", "u-released", "u-taken", "u-invalid", "u-deleted"):
        import_session(now, user)
    dead = {
        "expired": lease(now, "u-expired", "w1").lease_id,
        "released": (released := lease(now, "u-released", "w1")).lease_id,
        "taken-over": lease(now, "u-taken", "w1").lease_id,
        "invalidated": (invalidated := lease(now, "u-invalid", "w1")).lease_id,
        "deleted": lease(now, "u-deleted", "w1").lease_id,
    }
    now.call("ReleaseLease", pb.ReleaseLeaseRequest(lease_id=released.lease_id), role="worker_full")
    live = lease(later, "u-taken", "w2")  # a takeover, two hours on
    now.call(
        "ReportInvalidated",
        pb.ReportInvalidatedRequest(lease_id=invalidated.lease_id, reason="401"),
        role="worker_full",
    )
    now.call("DeleteSession", pb.DeleteSessionRequest(user_id="u-deleted"))
    guesses = {
        **dead,
        "random": secrets.token_urlsafe(24),
        "near-a-live-one": near(live.lease_id),
        "near-a-dead-one": near(dead["released"]),
    }
    synced = timestamp_pb2.Timestamp()
    synced.GetCurrentTime()
    calls = {
        "RenewLease": lambda lease_id: pb.RenewLeaseRequest(lease_id=lease_id),
        "RefreshLease": lambda lease_id: pb.RefreshLeaseRequest(lease_id=lease_id),
        "ReleaseLease": lambda lease_id: pb.ReleaseLeaseRequest(
            lease_id=lease_id, synced_through=synced
        ),
        "ReportRefreshed": lambda lease_id: pb.ReportRefreshedRequest(
            lease_id=lease_id, session=session_proto("guess")
        ),
        "ReportInvalidated": lambda lease_id: pb.ReportInvalidatedRequest(
            lease_id=lease_id, reason="guess"
        ),
    }
    # Asked two hours on (where "expired" is expired); guesses are also asked "now".
    asked = [(later, name, lease_id) for name, lease_id in guesses.items()]
    asked += [(now, name, guesses[name]) for name in ("random", "near-a-dead-one", "released")]
    compared = 0
    for rpc, build in calls.items():
        answers = {
            (replica is now, name): failure(
                partial(replica.call, rpc, build(lease_id), role="worker_full")
            )
            for replica, name, lease_id in asked
        }
        compared += len(answers)
        assert len(set(answers.values())) == 1, (rpc, answers)
        [only] = set(answers.values())
        assert only[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    # The live lease was never disturbed by the guesses near it.
    status = later.call("GetStatus", pb.GetStatusRequest(user_id="u-taken")).status
    assert status.lease.fencing_token == live.fencing_token
    assert status.lease.holder == live.holder
    record_figures("test_enumeration_leases", guesses_compared=compared)


def test_dead_and_guessed_challenge_ids_are_answered_alike(
    replicas: tuple[Replica, Replica], garmin: GarminEmulator
) -> None:
    now, later = replicas
    for user in ("c-live", "c-used", "c-superseded", "c-spent", "c-expired"):
        garmin.add_user(f"{user}@example.com", PASSWORD, mfa=True, mfa_code="424242")
    live = login(now, "c-live").mfa_challenge_id
    used = login(now, "c-used").mfa_challenge_id
    now.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=used, code="424242"))
    superseded = login(now, "c-superseded").mfa_challenge_id
    login(now, "c-superseded")
    spent = login(now, "c-spent").mfa_challenge_id
    for _ in range(3):
        failure(
            lambda: now.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=spent, code="0000"))
        )
    expired = login(now, "c-expired").mfa_challenge_id
    guesses = {
        "random": (now, secrets.token_urlsafe(32)),
        "near-a-live-one": (now, near(live)),
        "used": (now, used),
        "superseded": (now, superseded),
        "used-up": (now, spent),
        "expired": (later, expired),
        "random-later": (later, secrets.token_urlsafe(32)),
    }
    answers = {
        name: failure(
            lambda r=replica, i=challenge_id: r.call(
                "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=i, code="424242")
            )
        )
        for name, (replica, challenge_id) in guesses.items()
    }
    assert len(set(answers.values())) == 1, answers
    [only] = set(answers.values())
    assert only[:2] == (grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND")
    # The live challenge survived the guess next to it.
    done = now.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=live, code="424242"))
    assert done.status.state == pb.SESSION_STATE_ACTIVE
    record_figures("test_enumeration_challenges", guesses_compared=len(answers))


def test_unknown_and_never_connected_users_are_answered_alike(
    replicas: tuple[Replica, Replica], garmin: GarminEmulator
) -> None:
    now, _ = replicas
    garmin.add_user("victim@example.com", PASSWORD)
    garmin.add_user("tried@example.com", PASSWORD)
    garmin.add_user("gone@example.com", PASSWORD)
    login(now, "victim")
    login(now, "gone")
    now.call("DeleteSession", pb.DeleteSessionRequest(user_id="gone"))
    # "tried" never connected: the one login attempt was refused by Garmin.
    assert failure(lambda: login(now, "tried", "wrong password"))[1] == (
        "GARMIN_CREDENTIALS_REJECTED"
    )
    unknown, near_guess = f"nobody-{secrets.token_hex(8)}", near("victim")

    # GetStatus: exactly the answer of a never-connected user, but for the user id echoed.
    def status(user: str) -> bytes:
        answer = now.call("GetStatus", pb.GetStatusRequest(user_id=user), role="viewer")
        answer.status.user_id = ""
        return bytes(answer.SerializeToString())

    assert status(unknown) == status(near_guess) == status("tried")
    assert status("victim") != status("tried")  # (the comparison does see a difference)

    # LeaseSession: unknown, near, never connected and disconnected are one answer.
    refusals = {
        user: failure(
            lambda user=user: now.call(
                "LeaseSession", pb.LeaseSessionRequest(user_id=user, holder="w"), role="worker_full"
            )
        )
        for user in (unknown, near_guess, "tried", "gone")
    }
    assert len(set(refusals.values())) == 1, refusals
    assert next(iter(refusals.values()))[1] == "SESSION_NOT_FOUND"

    # DeleteSession answers the same empty message whoever it names; ListAuditEvents shows
    # nothing for an unknown user, as for one who never connected.
    deleted = {
        user: now.call("DeleteSession", pb.DeleteSessionRequest(user_id=user)).SerializeToString()
        for user in (unknown, near_guess, "tried")
    }
    assert set(deleted.values()) == {b""}
    events = {
        user: now.call("ListAuditEvents", pb.ListAuditEventsRequest(user_id=user)).events
        for user in (unknown, "tried")
    }
    assert all(len(found) == 0 for found in events.values())
    record_figures("test_enumeration_users", guesses_compared=4 + len(refusals) + len(deleted))
