"""A replica SIGKILLed while a call is inside Garmin: in the middle of Login, of SubmitMfa and
of a lease grant's central refresh. The killed replica is a `garmin-auth-service serve`
process on PostgreSQL; the survivor is an in-process replica on the same database. Garmin (the
emulator) holds the killed call with a "hang" fault, so the kill lands while the replica
waits for Garmin: after its own transactions committed, before its next one.

The survivor serves every pending challenge and every lease, and nothing half-written is
visible: a row is either as it was before the call or as a completed call leaves it.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from auth_service.config import mfa_claim_seconds, signin_claim_seconds
from auth_service.crypto import Keyring
from auth_service.domain.models import SessionState
from auth_service.domain.policies import KNOWN_DI_CLIENT_IDS
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.session_proto import tokens_to_proto
from garmin_client.settings import UpstreamSettings
from garmin_emulator import (
    EXCHANGE_PATH,
    LOGIN_PATH,
    VERIFY_MFA_PATH,
    GarminEmulator,
)
from tests.fixtures.servers import Replica, ServiceFactory, expect_failure

from . import (
    PASSWORD,
    ReplicaProcess,
    SkewedClock,
    StartReplica,
    audit_events,
    bearer,
    challenges_of,
    outcome_of,
    record_figures,
    stored_row,
    wait_until,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.postgres]

HANG_SECONDS = 60  # longer than the test: the emulator wakes hung handlers when it stops
SLOW_UPSTREAM = {"GARMIN_AUTH_UPSTREAM_TIMEOUT": "60"}  # the killed replica never gives up


def doomed_upstream(service_factory: ServiceFactory) -> UpstreamSettings:
    """The killed replica's way to Garmin (SLOW_UPSTREAM, the default retries), which sizes
    its claims."""
    return dataclasses.replace(
        service_factory.base_settings.upstream,
        timeout_seconds=float(SLOW_UPSTREAM["GARMIN_AUTH_UPSTREAM_TIMEOUT"]),
        retries=2,  # the default
    )


@pytest.fixture
def backend() -> str:
    """Replicas in several processes share a database: PostgreSQL, as in production."""
    return "postgresql"


def email(user_id: str) -> str:
    return f"{user_id}@example.com"


def login_request(user_id: str) -> pb.LoginRequest:
    return pb.LoginRequest(user_id=user_id, email=email(user_id), password=PASSWORD)


def in_flight(replica: ReplicaProcess, rpc: str, request: Any, role: str) -> grpc.Future:
    future: grpc.Future = getattr(replica.stub, rpc).future(
        request, metadata=bearer(role), timeout=90
    )
    return future


def cut_off(future: grpc.Future) -> tuple[str, str]:
    """What a call in flight on a killed replica answers."""
    try:
        future.result(timeout=30)
    except grpc.RpcError as error:
        return outcome_of(error)
    raise AssertionError("the call completed although its replica died")


def kill_while_inside_garmin(
    replica: ReplicaProcess, garmin: GarminEmulator, path: str, arrivals: int
) -> None:
    wait_until(
        lambda: garmin.request_count(path) >= arrivals, 30, f"{arrivals} request(s) at {path}"
    )
    replica.kill()


def test_replica_killed_mid_login_leaves_nothing_half_written(
    service_factory: ServiceFactory,
    replica_processes: StartReplica,
    garmin: GarminEmulator,
    database_url: str,
) -> None:
    doomed = replica_processes(database_url, **SLOW_UPSTREAM)
    # How long its hold on a Garmin account's one sign-in outlives it: the sign-in's calls
    # at their worst.
    doomed_hold = signin_claim_seconds(doomed_upstream(service_factory), KNOWN_DI_CLIENT_IDS)
    survivor = service_factory.start()
    garmin.add_user(email("ann"), PASSWORD)
    garmin.add_user(email("bob"), PASSWORD, mfa=True, mfa_code="246810")
    # ann already has a working session; bob has none.
    survivor.call("Login", login_request("ann"))
    before = stored_row(database_url, "ann")
    assert before is not None

    garmin.fail_next(LOGIN_PATH, "hang", count=2, delay=HANG_SECONDS)
    calls = [in_flight(doomed, "Login", login_request(user), "admin") for user in ("ann", "bob")]
    kill_while_inside_garmin(doomed, garmin, LOGIN_PATH, arrivals=1 + len(calls))
    assert {cut_off(call)[0] for call in calls} == {"UNAVAILABLE"}
    garmin.clear_faults()

    # ann's session is exactly as it was, and it is leased out as before.
    after = stored_row(database_url, "ann")
    assert after is not None
    assert (after.state, after.session_version, after.session_ciphertext) == (
        SessionState.ACTIVE,
        before.session_version,
        before.session_ciphertext,
    )
    assert challenges_of(database_url, "ann") == []
    grant = survivor.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="ann", holder="w"), role="worker"
    )
    assert grant.lease.fencing_token == 1
    # bob has nothing: no row, no challenge; he logs in again through the survivor.
    assert stored_row(database_url, "bob") is None
    assert challenges_of(database_url, "bob") == []
    status = survivor.call("GetStatus", pb.GetStatusRequest(user_id="bob")).status
    assert status.state == pb.SESSION_STATE_NOT_CONNECTED
    # The killed replica's sign-in of bob still holds his account until its claim expires
    # (as long as that sign-in could have taken): answered without Garmin.
    waiting = expect_failure(lambda: survivor.call("Login", login_request("bob")))
    assert waiting.reason == "GARMIN_RATE_LIMITED"
    # A replica whose clock runs the hold ahead stands for the time passing.
    later = service_factory.start(clock=SkewedClock(timedelta(seconds=doomed_hold + 1)))
    answer = later.call("Login", login_request("bob"))
    assert answer.outcome == pb.LOGIN_OUTCOME_MFA_REQUIRED
    done = later.call(
        "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=answer.mfa_challenge_id, code="246810")
    )
    assert done.status.state == pb.SESSION_STATE_ACTIVE
    # The audit trail holds no event of the killed calls: they changed nothing.
    logins = [(e.user_id, e.outcome_reason) for e in audit_events(database_url) if e.rpc == "Login"]
    assert logins == [("ann", "OK"), ("bob", "MFA_REQUIRED")]
    record_figures("test_replica_killed_mid_login", replicas_killed=1, calls_cut=2)


def test_replica_killed_mid_submit_mfa(
    service_factory: ServiceFactory,
    replica_processes: StartReplica,
    garmin: GarminEmulator,
    database_url: str,
) -> None:
    # Its challenges outlive its claim on one (which its 60 s upstream timeout sizes).
    doomed = replica_processes(database_url, **SLOW_UPSTREAM, GARMIN_AUTH_MFA_CHALLENGE_TTL="3600")
    # The challenge's claim, and the account's hold (longer: a Login's too).
    doomed_claim = mfa_claim_seconds(doomed_upstream(service_factory), KNOWN_DI_CLIENT_IDS)
    doomed_hold = signin_claim_seconds(doomed_upstream(service_factory), KNOWN_DI_CLIENT_IDS)
    assert doomed_hold > doomed_claim
    survivor = service_factory.start()
    garmin.add_user(email("carl"), PASSWORD, mfa=True, mfa_code="135790")
    garmin.add_user(email("dan"), PASSWORD, mfa=True, mfa_code="975310")
    waiting = doomed.call("Login", login_request("carl")).mfa_challenge_id
    submitted = doomed.call("Login", login_request("dan")).mfa_challenge_id

    garmin.fail_next(VERIFY_MFA_PATH, "hang", delay=HANG_SECONDS)
    call = in_flight(
        doomed,
        "SubmitMfa",
        pb.SubmitMfaRequest(mfa_challenge_id=submitted, code="975310"),
        "admin",
    )
    kill_while_inside_garmin(doomed, garmin, VERIFY_MFA_PATH, arrivals=1)
    assert cut_off(call)[0] == "UNAVAILABLE"

    # A challenge the killed replica stored is completed on the survivor.
    done = survivor.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=waiting, code="135790"))
    assert done.status.state == pb.SESSION_STATE_ACTIVE

    # The challenge whose code was in flight is still claimed by the dead replica: "retry in
    # a moment", and nothing of the submission is visible.
    def submit(replica: Replica) -> Any:
        return replica.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=submitted, code="975310")
        )

    busy = expect_failure(lambda: submit(survivor))
    assert (busy.code, busy.reason) == (grpc.StatusCode.ABORTED, "MFA_CHALLENGE_BUSY")
    row = stored_row(database_url, "dan")
    assert row is not None
    assert (row.state, row.session_ciphertext) == (SessionState.MFA_PENDING, None)
    [challenge] = challenges_of(database_url, "dan")
    assert challenge.failed_attempts == 0
    assert challenge.claimed_until is not None

    # Once the dead replica's claim has lapsed, any replica completes the challenge, once.
    # (A replica whose clock runs the doomed one's claim ahead stands for the time passing.)
    later = service_factory.start(clock=SkewedClock(timedelta(seconds=doomed_hold + 1)))
    assert submit(later).status.state == pb.SESSION_STATE_ACTIVE
    again = expect_failure(lambda: submit(survivor))
    assert (again.code, again.reason) == (grpc.StatusCode.NOT_FOUND, "MFA_CHALLENGE_NOT_FOUND")
    assert challenges_of(database_url, "dan") == []
    assert garmin.request_count(VERIFY_MFA_PATH) == 3
    record_figures("test_replica_killed_mid_submit_mfa", replicas_killed=1, calls_cut=1)


def test_replica_killed_mid_lease_grant(
    service_factory: ServiceFactory,
    replica_processes: StartReplica,
    garmin: GarminEmulator,
    database_url: str,
    keyring: Keyring,
) -> None:
    doomed = replica_processes(database_url, **SLOW_UPSTREAM)
    survivor = service_factory.start()
    for user in ("eve", "fay"):
        garmin.add_user(email(user), PASSWORD)
        survivor.call("Login", login_request(user))
    # eve's stored access token has expired, so a grant refreshes it at Garmin first.
    box = SecretBox(keyring)
    row = stored_row(database_url, "eve")
    assert row is not None
    assert row.session_ciphertext is not None
    tokens = box.open_tokens("eve", row.session_version, row.session_ciphertext)
    expired = tokens_to_proto(tokens)
    expired.oauth2.expires_at.FromDatetime(datetime.now(UTC) - timedelta(minutes=5))
    survivor.call("ImportSession", pb.ImportSessionRequest(user_id="eve", session=expired))
    before = stored_row(database_url, "eve")
    assert before is not None

    def lease(replica: Replica | ReplicaProcess, user: str, holder: str) -> Any:
        request = pb.LeaseSessionRequest(
            user_id=user, holder=holder, ttl=duration_pb2.Duration(seconds=5)
        )
        # worker_full: the grant's full session shows what the survivor refreshed.
        return replica.call("LeaseSession", request, role="worker_full")

    # fay's lease is granted by the doomed replica and is in use when it dies.
    fay_lease = lease(doomed, "fay", "worker-a").lease
    exchanges = garmin.request_count(EXCHANGE_PATH)  # the logins exchanged tokens too
    garmin.fail_next(EXCHANGE_PATH, "hang", delay=HANG_SECONDS)
    call = in_flight(
        doomed,
        "LeaseSession",
        pb.LeaseSessionRequest(
            user_id="eve", holder="worker-a", ttl=duration_pb2.Duration(seconds=5)
        ),
        "worker_full",
    )
    kill_while_inside_garmin(doomed, garmin, EXCHANGE_PATH, arrivals=exchanges + 1)
    assert cut_off(call)[0] == "UNAVAILABLE"

    # The grant had committed before Garmin was asked; the refresh never happened: the
    # stored session is the one from before, under a lease nobody will use or release.
    held = stored_row(database_url, "eve")
    assert held is not None
    assert (held.session_ciphertext, held.session_version, held.state) == (
        before.session_ciphertext,
        before.session_version,
        SessionState.ACTIVE,
    )
    assert (held.lease_holder, held.fencing_token) == ("worker-a", 1)
    # The survivor honours both leases until they expire ...
    for user in ("eve", "fay"):
        refused = expect_failure(partial(lease, survivor, user, "worker-b"))
        assert (refused.code, refused.reason) == (grpc.StatusCode.ABORTED, "LEASE_HELD")
        assert "worker-a" in refused.message

    # ... then takes them over with larger fencing tokens, refreshing eve's token itself.
    def taken(user: str) -> Any:
        try:
            return lease(survivor, user, "worker-b")
        except grpc.RpcError:
            return None

    grants: dict[str, Any] = {}

    def both_taken() -> bool:
        for user in ("eve", "fay"):
            if user not in grants and (answer := taken(user)) is not None:
                grants[user] = answer
        return len(grants) == 2

    wait_until(both_taken, 15, "the dead replica's leases to expire", interval=0.25)
    assert grants["eve"].lease.fencing_token == 2
    assert grants["fay"].lease.fencing_token == fay_lease.fencing_token + 1
    fresh = grants["eve"].session.oauth2
    assert fresh.access_token != tokens.oauth2.access_token
    assert fresh.expires_at.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
    after = stored_row(database_url, "eve")
    assert after is not None
    assert after.session_version == before.session_version + 1
    assert box.open_tokens(
        "eve", after.session_version, after.session_ciphertext or b""
    ).oauth2.access_token == (fresh.access_token)
    # The dead replica's caller, should it ever come back, holds nothing.
    late = expect_failure(
        lambda: survivor.call(
            "ReleaseLease",
            pb.ReleaseLeaseRequest(lease_id=fay_lease.lease_id),
            role="worker_full",
        )
    )
    assert (late.code, late.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    record_figures("test_replica_killed_mid_lease_grant", replicas_killed=1, calls_cut=1)
